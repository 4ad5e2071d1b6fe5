"""scripts/gpu_check.sh on a machine without a GPU (CI): one clear skip line, exit 0, nothing written; and the
figures script's own path on CPU (tiny shape), which must not import Ray, vLLM or Hydra (a bare GPU box has none)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_skips_cleanly_without_cuda(tmp_path) -> None:
    out = tmp_path / "gpu_check"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("gpu_check: skipped: no CUDA GPU visible (torch ")
    assert not out.exists()


def test_update_figures_on_cpu_without_ray_vllm_hydra(tmp_path) -> None:
    out = tmp_path / "fig.json"
    code = ("import sys, json; sys.path.insert(0, 'scripts'); import gpu_check; "
            f"rc = gpu_check.main(['--device', 'cpu', '--shape', 'tiny', '--rows', '4', '--micro', '2', "
            f"'--prompt-len', '16', '--response-len', '16', '--steps', '1', '--out', {str(out)!r}]); "
            "print(json.dumps([rc, sorted({m.split('.')[0] for m in sys.modules} & "
            "{'ray', 'vllm', 'hydra', 'omegaconf', 'httpx', 'wandb'})]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rc, imported = json.loads(r.stdout.strip().splitlines()[-1])
    assert rc == 0 and imported == []
    fig = json.loads(out.read_text())
    assert fig["tokens_per_s"] > 0 and fig["rows"] == 4 and fig["prompt_len"] + fig["response_len"] == 32
    assert fig["mfu"] is None and fig["compute_dtype"] == "fp32"  # no peak figure for a CPU
