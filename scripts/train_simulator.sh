#!/usr/bin/env bash
# Fine-tune a search simulator (for SEARCH_MODE simulate_sft): collect rows from a real engine, SFT, evaluate.
#
#   bash scripts/train_simulator.sh [KEY VALUE]...
#   bash scripts/train_simulator.sh                      # the embedded world: BM25 -> SmolLM2-135M simulator
#   bash scripts/train_simulator.sh NPROC 4 MODEL Qwen/Qwen2.5-3B-Instruct QUESTIONS data/nq_hotpotqa_train/train.parquet \
#        SEARCH "mode=wiki retriever_url=http://127.0.0.1:8000" OUT checkpoints/simulator-3b EPOCHS 2
#
# Keys (any order, all optional):
#   QUESTIONS  parquet(s) with question/golden_answers, space-separated  [data/embedded/train.parquet]
#   MAX_QUESTIONS  first N questions of each parquet (0: all)             [0]
#   TRAJECTORIES  trainer logs whose search_queries are also collected (logs/train_generations.jsonl) [none]
#   SEARCH     search.* keys of the real engine                          ["mode=local"]
#   DATA       where the collected rows go                                 [data/simulator/sft.jsonl]
#   OUT        the simulator's HF directory                                [checkpoints/simulator]
#   MODEL [embedded]  EPOCHS [1]  LR [1e-4]  BATCH_SIZE [32]  TOPK [3]  NPROC [1] (torchrun ranks)
#   EVAL [true]  serve the result and print useful-hit / noisy-leak on held-out questions
# Then: bash train_grpo.sh SEARCH_MODE simulate_sft SIMULATION_LLM <OUT>
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"

QUESTIONS=data/embedded/train.parquet MAX_QUESTIONS=0 TRAJECTORIES="" SEARCH="mode=local" DATA=data/simulator/sft.jsonl
OUT=checkpoints/simulator MODEL=embedded EPOCHS=1 LR=1e-4 BATCH_SIZE=32 TOPK=3 NPROC=1 EVAL=true
KNOWN="QUESTIONS MAX_QUESTIONS TRAJECTORIES SEARCH DATA OUT MODEL EPOCHS LR BATCH_SIZE TOPK NPROC EVAL"
source scripts/keys.sh
parse_keys "$KNOWN" "$@"
for n in EPOCHS BATCH_SIZE TOPK NPROC; do
  [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || { echo "$n must be a positive integer, got '${!n}'" >&2; exit 2; }
done
[[ "$MAX_QUESTIONS" =~ ^[0-9]+$ ]] || { echo "MAX_QUESTIONS must be an integer >= 0 (0: all), got '$MAX_QUESTIONS'" >&2
  exit 2; }
case "${EVAL,,}" in  # the train scripts' boolean words
  true|1|yes) EVAL=true ;;
  false|0|no) EVAL=false ;;
  *) echo "EVAL expects true/false (or 1/0, yes/no), got '$EVAL'" >&2; exit 2 ;;
esac
if [ "$QUESTIONS" = data/embedded/train.parquet ] && [ ! -f "$QUESTIONS" ]; then
  "$PY" -m zerosearch.data.world --out data/embedded
fi

# shellcheck disable=SC2086  # QUESTIONS / TRAJECTORIES / SEARCH are space-separated lists
"$PY" -m zerosearch.simulator collect --out "$DATA" --questions $QUESTIONS --trajectories $TRAJECTORIES \
  --search $SEARCH --topk "$TOPK" --max-questions "$MAX_QUESTIONS"
LAUNCH=("$PY")
[ "$NPROC" -gt 1 ] && LAUNCH=("$PY" -m torch.distributed.run --nproc_per_node "$NPROC")
"${LAUNCH[@]}" -m zerosearch.simulator finetune --data "$DATA" --out "$OUT" --model "$MODEL" --epochs "$EPOCHS" \
  --lr "$LR" --batch-size "$BATCH_SIZE"
if [ "$EVAL" = true ]; then
  "$PY" -m zerosearch.simulator evaluate --data "$DATA" --model "$OUT" --mode simulate_sft --topk "$TOPK"
fi
echo "simulator ready: bash train_grpo.sh SEARCH_MODE simulate_sft SIMULATION_LLM $OUT" >&2
