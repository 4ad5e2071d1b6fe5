"""Engine construction details that need no engine: vLLM CPU thread binding per rank, name validation."""

from __future__ import annotations

import pytest

from verl.workers.rollout import build_rollout_engine
from verl.workers.rollout.vllm_rollout import cpu_bind_spec


def test_single_engine_keeps_vllm_auto_binding():
    assert cpu_bind_spec(rank=0, world_size=1, cpu_threads=None, cores=[0, 1]) is None


def test_ranks_get_disjoint_cores():
    assert cpu_bind_spec(0, 2, None, cores=[0, 1]) == "0"
    assert cpu_bind_spec(1, 2, None, cores=[0, 1]) == "1"
    assert cpu_bind_spec(1, 2, None, cores=[0, 1, 2, 3]) == "2,3"
    assert cpu_bind_spec(0, 1, 2, cores=[4, 5, 6]) == "4,5"
    assert cpu_bind_spec(2, 4, 1, cores=[0, 1]) == "0"  # more ranks than cores: wrap around


def test_tensor_parallel_workers_split_the_rank_block():
    assert cpu_bind_spec(1, 2, 4, tensor_parallel_size=2, cores=list(range(8))) == "4,5|6,7"
    assert cpu_bind_spec(0, 1, 1, tensor_parallel_size=2, cores=[0, 1]) == "0|0"


def test_bad_values_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="cpu_threads"):
        cpu_bind_spec(0, 1, 0, cores=[0, 1])
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.rollout\.name='x'.*\['hf', 'vllm'\]"):
        build_rollout_engine("x", str(tmp_path), max_model_len=16)


def test_weights_dirs_of_dead_processes_are_removed(tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    from verl.workers.rollout import vllm_rollout

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{vllm_rollout.WEIGHTS_DIR_PREFIX}{int(dead.stdout)}-abc"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x")
    other = tmp_path / "unrelated"
    other.mkdir()
    mine = vllm_rollout._make_weights_dir()
    assert not stale.exists() and other.exists()
    assert mine.name.startswith(str(tmp_path / vllm_rollout.WEIGHTS_DIR_PREFIX))
    mine.cleanup()
