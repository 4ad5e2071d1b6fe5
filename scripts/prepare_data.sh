#!/usr/bin/env bash
# Prepare datasets in the ZeroSearch parquet schema.
#
#   bash scripts/prepare_data.sh embedded [--out data/embedded] [--seed 0] [--entities 1200] ...
#       the embedded fictional world (corpus.jsonl, train/test.parquet); no network needed
#   bash scripts/prepare_data.sh [--out data/zerosearch] [--local-dir DIR | --from-zerosearch DIR] ...
#       NQ + HotpotQA train, seven test sets (FlashRAG collection from the hub, or local JSONL files)
#
# Every option is passed to `python -m zerosearch.data.world` / `python -m zerosearch.data.prepare`
# (see --help). PYTHON overrides the interpreter (default: the project venv if present, else python3).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
module=zerosearch.data.prepare
default_out="data/zerosearch"
if [[ "${1:-}" == "embedded" ]]; then
  module=zerosearch.data.world
  default_out="data/embedded"
  shift
fi
has_out=0
for arg in "$@"; do
  [[ "$arg" == "--out" || "$arg" == --out=* ]] && has_out=1
  [[ "$arg" == "-h" || "$arg" == "--help" ]] && has_out=1
done
if [[ $has_out -eq 0 ]]; then
  set -- --out "$default_out" "$@"
fi
cd "$ROOT"
exec "$PYTHON" -m "$module" "$@"
