#!/usr/bin/env bash
# GPU check for a bare GPU machine: needs only torch + transformers (and pytest); no Ray, vLLM or Hydra.
#   bash scripts/gpu_check.sh [OUT_DIR]        (default: benchmarks/results/gpu_check)
# 1. the `gpu`-marked tests of tests/verl/test_gpu_bare.py: FSDP2 actor update in bf16 on one GPU (NCCL, world
#    size 1) and log-prob parity CPU vs CUDA (results: OUT_DIR/tests.xml);
# 2. scripts/gpu_check.py: the actor update's tokens/s and MFU on a Qwen2.5-3B-shaped random model
#    (OUT_DIR/update_qwen2.5-3b.json). About 2-4 minutes on one H100/H200.
# Without a CUDA GPU it prints one "gpu_check: skipped" line and exits 0 (CI runs that path).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
OUT="${1:-benchmarks/results/gpu_check}"

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  TORCH=$("$PY" -c "import torch; print('torch', torch.__version__)" 2>/dev/null || echo "no torch")
  echo "gpu_check: skipped: no CUDA GPU visible ($TORCH); nothing was run"
  exit 0
fi
mkdir -p "$OUT"
"$PY" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0), 'torch', torch.__version__, 'cuda', torch.version.cuda)"
# --noconftest: the suite's conftest imports packages a bare box lacks; the module skips itself without CUDA
timeout 300 "$PY" -m pytest -p no:cacheprovider --noconftest -o addopts="" --import-mode=importlib -q -m gpu \
  tests/verl/test_gpu_bare.py --junitxml "$OUT/tests.xml"
timeout 300 "$PY" scripts/gpu_check.py --out "$OUT/update_qwen2.5-3b.json"
echo "gpu_check: done; figures in $OUT"
