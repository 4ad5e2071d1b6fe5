#!/usr/bin/env bash
# Serve a passage corpus over Search-R1's `POST /retrieve` API (what SEARCH_MODE wiki calls).
#
#   bash scripts/launch_retriever.sh [KEY VALUE]...
#   bash scripts/launch_retriever.sh CORPUS data/wiki-18.jsonl PORT 8000
#
# Keys (any order, all optional):
#   CORPUS       passage JSONL {"id", "contents": "\"Title\"\ntext"}   [data/embedded/corpus.jsonl]
#   PORT [8000]  HOST [127.0.0.1: loopback only; 0.0.0.0 serves the network]  TOPK [3] (default k, 1..1000)
#   RETRIEVER    bm25 | dense   [bm25]      DENSE_MODEL  e5-style model dir (dense only)
#   INDEX_DIR    where the BM25 index is cached [the cache dir, keyed by corpus hash]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"

CORPUS=data/embedded/corpus.jsonl PORT=8000 HOST=127.0.0.1 TOPK=3 RETRIEVER=bm25 DENSE_MODEL="" INDEX_DIR=""
KNOWN="CORPUS PORT HOST TOPK RETRIEVER DENSE_MODEL INDEX_DIR"
source scripts/keys.sh
parse_keys "$KNOWN" "$@"
[[ "$TOPK" =~ ^[1-9][0-9]{0,3}$ ]] && [ "$TOPK" -le 1000 ] || {
  echo "TOPK must be an integer in [1, 1000] (documents per query when a request gives none), got '$TOPK'" >&2; exit 2; }
[[ "$PORT" =~ ^[1-9][0-9]{0,4}$ ]] && [ "$PORT" -le 65535 ] || {
  echo "PORT must be a TCP port in [1, 65535], got '$PORT'" >&2; exit 2; }
[ -f "$CORPUS" ] || { echo "CORPUS '$CORPUS' does not exist" >&2; exit 2; }

ARGS=(--corpus "$CORPUS" --host "$HOST" --port "$PORT" --topk "$TOPK" --retriever "$RETRIEVER")
[ -n "$DENSE_MODEL" ] && ARGS+=(--dense-model "$DENSE_MODEL")
[ -n "$INDEX_DIR" ] && ARGS+=(--index-dir "$INDEX_DIR")
exec "$PY" -m zerosearch.retriever.server "${ARGS[@]}"
