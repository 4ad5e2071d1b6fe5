#!/usr/bin/env bash
# Evaluate a model on QA test sets with real search: the paper's table, resumable.
#   bash scripts/evaluate.sh MODEL_PATH checkpoints/zerosearch/quickstart DATA_PATH data/embedded SEARCH_ENGINE local
#   bash scripts/evaluate.sh MODEL_PATH Qwen/Qwen2.5-3B-Instruct DATA_PATH data/zerosearch SEARCH_ENGINE google
#   bash scripts/evaluate.sh --compare eval/A eval/B
# Keys as in the train scripts, all optional; `bash scripts/evaluate.sh --help` lists them. Extra a.b=c pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
exec "$PY" -m zerosearch.eval "$@"
