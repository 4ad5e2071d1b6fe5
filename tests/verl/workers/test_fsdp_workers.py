"""ActorRolloutRefWorker in real Ray worker groups with FSDP2 on gloo and the embedded model.

1 rank == 2 ranks for one update (loaded from the same checkpoint: also a 2 -> 1 rank reshard), the
rollout engine follows the actor after a weight sync, checkpoints restore parameters and optimizer
state exactly, and the HF export loads with from_pretrained and gives the actor's log-probs.
"""

from __future__ import annotations

import json

import pytest
import ray
import torch

from verl.protocol import DataProto
from verl.single_controller import RayWorkerGroup, reduce_metrics
from verl.trainer.config import PPOConfig, resolve_rollout_defaults
from verl.workers.fsdp_workers import ActorRolloutRefWorker
from verl.workers.rollout.base import SamplingParams

P, R, B = 16, 16, 4
pytestmark = pytest.mark.slow


def make_config(world: int, model_path: str, rollout: str = "hf") -> PPOConfig:
    cfg = PPOConfig()
    cfg.trainer.device, cfg.trainer.n_gpus_per_node, cfg.trainer.threads_per_worker = "cpu", world, 1
    cfg.data.max_prompt_length, cfg.data.max_response_length = P, R
    a = cfg.actor_rollout_ref
    a.model.path = model_path
    a.rollout.name, a.rollout.n, a.rollout.log_prob_micro_batch_size_per_gpu = rollout, 1, 2
    a.actor.ppo_mini_batch_size, a.actor.ppo_micro_batch_size_per_gpu = B, 1
    a.actor.optim.lr = 1e-4
    return resolve_rollout_defaults(cfg)


def batch_from(prompts: list[list[int]], responses: list[list[int]], seed: int = 0) -> DataProto:
    """verl layout: left-padded prompts [B, P], right-padded responses [B, R], masks, advantages."""
    n = len(prompts)
    p_ids, r_ids = torch.full((n, P), 2), torch.full((n, R), 2)
    attn = torch.zeros(n, P + R, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        p, r = p[-P:], r[:R]
        p_ids[i, P - len(p):], attn[i, P - len(p):P] = torch.tensor(p), 1
        r_ids[i, :len(r)], attn[i, P:P + len(r)] = torch.tensor(r), 1
    g = torch.Generator().manual_seed(seed)
    mask = attn[:, P:].clone()
    return DataProto.from_dict({
        "prompts": p_ids, "responses": r_ids, "input_ids": torch.cat([p_ids, r_ids], 1), "attention_mask": attn,
        "position_ids": (attn.cumsum(-1) - 1).clamp(min=0), "response_mask": mask,
        "advantages": torch.randn(n, 1, generator=g).expand(n, R) * mask,
    }, meta_info={"temperature": 1.0})


def random_batch(seed: int = 0) -> DataProto:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(10, 5000, (P - 2 * i,), generator=g).tolist() for i in range(B)]
    responses = [torch.randint(10, 5000, (R - 3 * i,), generator=g).tolist() for i in range(B)]
    return batch_from(prompts, responses, seed)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def wg2(cluster, embedded_model_path):
    wg = RayWorkerGroup(ActorRolloutRefWorker, 2, init_args=(make_config(2, embedded_model_path),),
                        cpus_per_worker=0.5, name="actor2")
    wg.execute_all("init_model")
    yield wg
    wg.shutdown()


def update(wg: RayWorkerGroup, data: DataProto) -> dict[str, float]:
    data.union(wg.dispatch_dp("compute_log_prob", data).select(["old_log_probs"]))
    return reduce_metrics(wg.dispatch_dp_exact("update_actor", data))


def test_one_rank_equals_two_ranks(wg2, embedded_model_path, tmp_path) -> None:
    wg2.execute_all("save_checkpoint", str(tmp_path / "start"), 0)
    wg1 = RayWorkerGroup(ActorRolloutRefWorker, 1, init_args=(make_config(1, embedded_model_path),),
                         cpus_per_worker=0.5, name="actor1")
    try:
        wg1.execute_all("init_model", build_rollout=False)
        wg1.execute_all("load_checkpoint", str(tmp_path / "start"))  # 2 ranks -> 1 rank
        assert wg1.execute_rank0("get_state_digest") == wg2.execute_all("get_state_digest")[0]
        m1, m2 = update(wg1, random_batch()), update(wg2, random_batch())
        for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "actor/pg_clipfrac"):
            assert m1[key] == pytest.approx(m2[key], rel=1e-4, abs=1e-5), key
        d1, d2 = wg1.execute_rank0("get_state_digest"), wg2.execute_all("get_state_digest")[0]
        assert d1["sum"] == pytest.approx(d2["sum"], rel=1e-6)
    finally:
        wg1.shutdown()


def test_rollout_follows_actor_after_sync(wg2) -> None:
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=R, logprobs=True)
    prompts = [[1, 9690, 198, 17661, 314, 260], [1, 4093, 314, 2114, 30], [1, 504, 3458], [1, 2, 3, 4, 5]]

    def rollout_and_actor_logprobs() -> tuple[list, list, list]:
        outs = wg2.dispatch_dp_list("generate", prompts, greedy)
        data = batch_from(prompts, [o.token_ids for o in outs])
        actor_lp = wg2.dispatch_dp("compute_log_prob", data).batch["old_log_probs"]
        return outs, [o.logprobs for o in outs], [actor_lp[i, :len(o.token_ids)].tolist() for i, o in enumerate(outs)]

    assert all(s >= 0 for s in wg2.execute_all("sync_rollout_weights"))
    before, engine_lp, actor_lp = rollout_and_actor_logprobs()
    for e, a in zip(engine_lp, actor_lp):
        assert e == pytest.approx(a, abs=2e-3)  # engine == actor weights
    update(wg2, batch_from(prompts, [o.token_ids for o in before]))
    seconds = wg2.execute_all("sync_rollout_weights")
    assert all(0 < s < 60 for s in seconds)
    after, engine_lp2, actor_lp2 = rollout_and_actor_logprobs()
    for e, a in zip(engine_lp2, actor_lp2):
        assert e == pytest.approx(a, abs=2e-3)  # still equal after the update: the sync worked
    changed = [o1.token_ids != o2.token_ids or abs(o1.logprobs[0] - o2.logprobs[0]) > 1e-3
               for o1, o2 in zip(before, after)]
    assert all(changed)


def test_checkpoint_roundtrip_restores_params_and_optimizer(wg2, tmp_path) -> None:
    data = random_batch(seed=3)
    wg2.execute_all("save_checkpoint", str(tmp_path / "ckpt"), 7)
    saved = wg2.execute_all("get_state_digest")[0]
    update(wg2, random_batch(seed=3))
    after_one = wg2.execute_all("get_state_digest")[0]
    assert after_one != saved
    assert wg2.execute_all("load_checkpoint", str(tmp_path / "ckpt")) == [7, 7]
    assert wg2.execute_all("get_state_digest")[0] == saved
    update(wg2, data)  # same update from the restored state: moments, step count and lr must match too
    assert wg2.execute_all("get_state_digest")[0]["sum"] == pytest.approx(after_one["sum"], rel=1e-9)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "dcp", "extra_state_rank0.pt", "extra_state_rank1.pt"]


def test_hf_export_loads_and_matches(wg2, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = wg2.execute_all("save_hf_model", str(tmp_path / "hf"))
    assert out == [str(tmp_path / "hf"), None]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    data = random_batch(seed=5)
    actor_lp = wg2.dispatch_dp("compute_log_prob", data).batch["old_log_probs"]
    b = data.batch
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       position_ids=b["position_ids"]).logits[:, P - 1:-1]
    hf_lp = torch.log_softmax(logits, -1).gather(-1, b["responses"].unsqueeze(-1)).squeeze(-1)
    real = b["attention_mask"][:, P:].bool()
    torch.testing.assert_close(actor_lp[real], hf_lp[real], atol=1e-3, rtol=1e-4)
