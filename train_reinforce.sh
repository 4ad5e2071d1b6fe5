#!/usr/bin/env bash
# ZeroSearch REINFORCE training. Same keys as the original ZeroSearch script, by key, in any order:
#   bash train_reinforce.sh NUM_GPUS_PER_NODE 4 MODEL_PATH Qwen/Qwen2.5-3B DATA_PATH ZeroSearch_dataset \
#        TOTAL_STEPS 203 IP localhost SEARCH_MODE simulate_sft SIMULATION_LLM sunhaonlp/SearchSimulation_14B \
#        START_THRESHOLD 0 END_THRESHOLD 0.5
# Every key is optional (defaults: embedded model and world, prompted simulator, CPU without a GPU);
# `bash train_reinforce.sh --help` lists them. Extra Hydra overrides (a.b=c) pass through.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
exec "$PY" -m zerosearch.launch reinforce "$@"
