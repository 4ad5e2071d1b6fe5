"""ZeroSearch end to end on CPU: 2 GRPO steps on the embedded world with a REAL vLLM OpenAI server as the
simulation LLM (behind a recording proxy), FSDP2 workers on Ray, validation with real (BM25) search, and the
asynchronous rollout (`actor_rollout_ref.rollout.mode=async`: each worker holds vLLM's AsyncLLM and takes single
requests from the driver's agent loop; the lockstep path runs in the quickstart and evaluation tests).

Checks: trajectories contain <information> blocks; observation tokens are outside the policy-loss mask;
every simulator call carries the question of the very trajectory that issued the query.
"""

import json
import math
import subprocess
import sys

import pytest

from verl.trainer.main_ppo import compose_config, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    subprocess.run([sys.executable, "-m", "zerosearch.data.world", "--out", str(out), "--entities", "1000",
                    "--train", "64", "--test", "8"], check=True)
    return out


def _user_question(body: dict) -> str:
    return body["messages"][-1]["content"]


def test_grpo_two_steps_with_real_simulator(world, vllm_server, recording_proxy, tmp_path):
    proxy = recording_proxy(vllm_server.url)
    host, port = proxy.url.rsplit(":", 1)
    cfg = compose_config("zerosearch", [
        f"data.train_files=[{world}/train.parquet]", f"data.val_files=[{world}/test.parquet]",
        "data.train_batch_size=2", "data.max_response_length=160", "data.max_obs_length=96",
        "data.assistant_prefix='<search>'",  # every trajectory starts with a search: the simulator is exercised
        "actor_rollout_ref.rollout.n=2", "actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.mode=async",
        "actor_rollout_ref.rollout.temperature=0.5",  # the 135M model rambles at temperature 1
        "actor_rollout_ref.actor.ppo_mini_batch_size=2", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.use_kl_loss=true",
        "trainer.n_gpus_per_node=2", "trainer.device=cpu", "trainer.total_training_steps=2",
        "trainer.test_freq=2", "trainer.save_freq=-1", "trainer.resume_mode=disable", "trainer.logger=[jsonl]",
        "trainer.memory_plan=off",  # fits (measured); the plan counts the shared vLLM server fixture as used
        f"trainer.default_local_dir={tmp_path}", "trainer.log_train_generations=100",
        f"search.ips=[{host.split('//')[1]}]", f"search.port={port}", "search.max_turns=1", "search.topk=2",
        f"search.corpus_path={world}/corpus.jsonl", "search.timeout_s=300", "search.max_tokens=128",
        "search.start_threshold=0.0", "search.end_threshold=0.5",
    ])
    summary = run(cfg)
    assert summary["global_step"] == 2
    logs = tmp_path / "logs"
    rows = [json.loads(x) for x in (logs / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(r["actor/pg_loss"]) and math.isfinite(r["actor/kl_loss"])
    # observation tokens are in the response but not in the policy-loss mask
    assert any(r["response_length/policy_tokens/mean"] < r["response_length/mean"] for r in rows)
    assert sum(r.get("search/calls", 0) for r in rows) > 0
    assert max(r["rollout/requests_in_flight/max"] for r in rows) > 1  # trajectories ran at once, on both workers
    assert all(r["rollout/critical_path_s"] <= r["rollout/wall_s"] + 1e-6 for r in rows)
    assert "val/embedded_1hop/em" in rows[-1] or "val/embedded_2hop/em" in rows[-1]

    trajs = [json.loads(x) for x in (logs / "train_generations.jsonl").read_text().splitlines()]
    assert len(trajs) == 2 * 2 * 2  # steps x prompts x samples
    # each search inserts one <information> block (the policy may also write the tag itself: that is its text)
    assert sum(t["num_searches"] for t in trajs) >= 1
    assert all(t["response_text"].count("<information>") >= t["num_searches"] for t in trajs)
    assert all(len(t["search_queries"]) >= t["num_searches"] for t in trajs)
    # the simulator served (at least) every search the trajectories count: nothing came from elsewhere
    assert len(proxy.bodies) >= sum(t["num_searches"] for t in trajs)

    # every simulator call: its question belongs to a trajectory that issued exactly that query
    asked = {(t["question"], q.strip()) for t in trajs for q in t.get("search_queries") or []}
    assert proxy.bodies, "the simulator was never called"
    for body in proxy.bodies:
        prompt = _user_question(body)
        assert any(q in prompt and query in prompt for q, query in asked), prompt[:500]
