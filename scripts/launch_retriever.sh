#!/usr/bin/env bash
# Serve a passage corpus over Search-R1's `POST /retrieve` API (what SEARCH_MODE wiki calls).
#
#   bash scripts/launch_retriever.sh [KEY VALUE]...
#   bash scripts/launch_retriever.sh CORPUS data/wiki-18.jsonl PORT 8000
#
# Keys (any order, all optional):
#   CORPUS       passage JSONL {"id", "contents": "\"Title\"\ntext"}   [data/embedded/corpus.jsonl]
#   PORT [8000]  HOST [127.0.0.1]  TOPK [3] (default k when a request gives none)
#   RETRIEVER    bm25 | dense   [bm25]      DENSE_MODEL  e5-style model dir (dense only)
#   INDEX_DIR    where the BM25 index is cached [the cache dir, keyed by corpus hash]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"

CORPUS=data/embedded/corpus.jsonl PORT=8000 HOST=127.0.0.1 TOPK=3 RETRIEVER=bm25 DENSE_MODEL="" INDEX_DIR=""
KNOWN="CORPUS PORT HOST TOPK RETRIEVER DENSE_MODEL INDEX_DIR"
source scripts/keys.sh
parse_keys "$KNOWN" "$@"
[ -f "$CORPUS" ] || { echo "CORPUS '$CORPUS' does not exist" >&2; exit 2; }

ARGS=(--corpus "$CORPUS" --host "$HOST" --port "$PORT" --topk "$TOPK" --retriever "$RETRIEVER")
[ -n "$DENSE_MODEL" ] && ARGS+=(--dense-model "$DENSE_MODEL")
[ -n "$INDEX_DIR" ] && ARGS+=(--index-dir "$INDEX_DIR")
exec "$PY" -m zerosearch.retriever.server "${ARGS[@]}"
