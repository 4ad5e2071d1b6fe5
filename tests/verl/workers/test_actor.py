"""DataParallelPPOActor on a real FSDP2-sharded embedded model (1-rank gloo group in this process).

Invariances: micro-batch 1 x accumulation 4 == micro-batch 4 x accumulation 1 for every loss_agg_mode;
observation tokens (response_mask 0) carry no loss; the KL loss pulls the policy toward the reference;
length-grouped and token-budget micro-batches (use_dynamic_bsz) change neither log-probs nor the update.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from verl.protocol import DataProto
from verl.single_controller.dist import init_dist
from verl.trainer.config import ActorConfig, OptimConfig
from verl.trainer.ppo import core_algos
from verl.workers.actor import (
    DataParallelPPOActor,
    micro_batches,
    model_inputs,
    token_budget_sizes,
    unsort_rows,
)
from verl.workers.fsdp_utils import (
    apply_fsdp2,
    build_lr_scheduler,
    build_optimizer,
    full_state_dict,
    load_hf_model,
    trim_padding,
)

P, R, B = 16, 16, 4


def make_batch(seed: int = 0, batch: int = B) -> DataProto:
    """Left-padded prompts, right-padded responses of different lengths, an observation span in row 1."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(10, 5000, (batch, P), generator=g)
    responses = torch.randint(10, 5000, (batch, R), generator=g)
    attn = torch.ones(batch, P + R, dtype=torch.long)
    for i in range(batch):
        attn[i, : (3 * i) % 7] = 0  # left padding of the prompt
        resp_len = [R, 5, 11, 2, 9, 16, 7, 13][i % 8]
        attn[i, P + resp_len:] = 0  # right padding of the response
    prompts[attn[:, :P] == 0] = 2
    responses[attn[:, P:] == 0] = 2
    response_mask = attn[:, P:].clone()
    response_mask[0, 4:9] = 0  # an <information> block: attended, but not the policy's tokens
    return DataProto.from_dict({
        "prompts": prompts, "responses": responses, "input_ids": torch.cat([prompts, responses], 1),
        "attention_mask": attn, "position_ids": (attn.cumsum(-1) - 1).clamp(min=0), "response_mask": response_mask,
        "advantages": torch.randn(batch, R, generator=g) * response_mask,
    })


@pytest.fixture(scope="module")
def model(embedded_model_path):
    torch.set_num_threads(1)
    init_dist("cpu")
    module = apply_fsdp2(load_hf_model(embedded_model_path), "cpu", 1)
    initial = full_state_dict(module)
    module.initial_state = initial
    return module


def fresh_actor(model, **overrides) -> DataParallelPPOActor:
    """The module reset to the initial weights, with a new optimizer (lr 1e-5, no warmup) and config."""
    set_model_state_dict(model, model.initial_state, options=StateDictOptions(full_state_dict=True))
    cfg = dataclasses.replace(ActorConfig(ppo_mini_batch_size=B, ppo_micro_batch_size_per_gpu=B,
                                          optim=OptimConfig(lr=1e-5)), **overrides)
    opt = build_optimizer(model, cfg.optim)
    return DataParallelPPOActor(model, opt, build_lr_scheduler(opt, cfg.optim, 10), cfg)


def with_old_log_probs(actor: DataParallelPPOActor, data: DataProto) -> DataProto:
    lp, _ = actor.compute_log_prob(data, micro_batch_size=B)
    data.batch["old_log_probs"] = lp + 0.05 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(1))
    return data


def test_log_prob_matches_untrimmed_forward(model) -> None:
    actor = fresh_actor(model)
    data = make_batch()
    temperature = 0.7
    lp, ent = actor.compute_log_prob(data, micro_batch_size=3, temperature=temperature, calculate_entropy=True)
    assert lp.shape == ent.shape == (B, R)
    b = data.batch
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       position_ids=b["position_ids"]).logits[:, P - 1:-1] / temperature
    ref_lp = torch.log_softmax(logits, -1).gather(-1, b["responses"].unsqueeze(-1)).squeeze(-1)
    ref_ent = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    real = b["attention_mask"][:, P:].bool()
    torch.testing.assert_close(lp[real], ref_lp[real], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(ent[real], ref_ent[real], atol=1e-3, rtol=1e-3)
    assert torch.isfinite(lp).all() and (lp[~real] == 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])  # the two scaling rules (token / row)
def test_micro_batch_invariance(model, mode: str) -> None:
    results = []
    for micro in (1, B):
        actor = fresh_actor(model, ppo_micro_batch_size_per_gpu=micro, loss_agg_mode=mode)
        data = with_old_log_probs(actor, make_batch())
        results.append(actor.update_policy(data))
    one, four = results
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/pg_clipfrac", "actor/ppo_kl", "actor/entropy"):
        assert one[key] == pytest.approx(four[key], rel=1e-4, abs=2e-5), key


def test_observation_tokens_carry_no_loss(model) -> None:
    base = make_batch()
    results = []
    for variant in range(2):
        actor = fresh_actor(model, ppo_micro_batch_size_per_gpu=2)
        data = with_old_log_probs(actor, make_batch())
        if variant:  # change labels, advantages and old log-probs where response_mask is 0 (inputs unchanged)
            masked = base.batch["response_mask"] == 0
            responses = data.batch["responses"]
            data.batch["responses"] = torch.where(masked, (responses + 17) % 5000, responses)
            data.batch["advantages"] = torch.where(masked, torch.full_like(data.batch["advantages"], 5.0),
                                                   data.batch["advantages"])
            data.batch["old_log_probs"] = torch.where(masked, torch.full_like(data.batch["old_log_probs"], -3.0),
                                                      data.batch["old_log_probs"])
            assert not torch.equal(data.batch["responses"], base.batch["responses"])
        results.append(actor.update_policy(data))
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy"):
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-6, abs=1e-7), key


def test_kl_loss_is_added_and_pulls_toward_reference(model) -> None:
    actor = fresh_actor(model, use_kl_loss=True, kl_loss_coef=1.0, kl_loss_type="low_var_kl",
                        ppo_micro_batch_size_per_gpu=2, optim=OptimConfig(lr=1e-6))
    data = make_batch()
    data.batch["advantages"].zero_()  # only the KL term drives the update
    lp, _ = actor.compute_log_prob(data, micro_batch_size=B)
    data.batch["old_log_probs"] = lp
    data.batch["ref_log_prob"] = lp - 0.5
    mask = data.batch["response_mask"]
    kl_before = core_algos.agg_loss(core_algos.kl_penalty(lp, data.batch["ref_log_prob"], "low_var_kl"), mask,
                                    "token-mean").item()
    metrics = actor.update_policy(data)
    assert metrics["actor/kl_loss"] == pytest.approx(kl_before, rel=1e-4)
    assert metrics["actor/kl_coef"] == 1.0
    lp_after, _ = actor.compute_log_prob(data, micro_batch_size=B)
    kl_after = core_algos.agg_loss(core_algos.kl_penalty(lp_after, data.batch["ref_log_prob"], "low_var_kl"), mask,
                                   "token-mean").item()
    assert kl_after < kl_before  # subtracting the KL (the original's bug) would push it up


def test_on_policy_shortcut_matches_explicit_old_log_probs(model) -> None:
    runs = []
    for explicit in (True, False):
        actor = fresh_actor(model)
        data = make_batch()
        if explicit:
            data.batch["old_log_probs"], _ = actor.compute_log_prob(data, micro_batch_size=B)
        runs.append(actor.update_policy(data))
    assert runs[0]["actor/pg_loss"] == pytest.approx(runs[1]["actor/pg_loss"], rel=1e-4, abs=1e-6)
    assert runs[0]["actor/grad_norm"] == pytest.approx(runs[1]["actor/grad_norm"], rel=1e-3)
    actor = fresh_actor(model, ppo_epochs=2)
    with pytest.raises(ValueError, match="old_log_probs"):
        actor.update_policy(make_batch())


def test_metrics_names_and_lr(model) -> None:
    actor = fresh_actor(model, ppo_mini_batch_size=2, ppo_micro_batch_size_per_gpu=1)  # 2 optimizer steps
    metrics = actor.update_policy(with_old_log_probs(actor, make_batch()))
    expected = {"actor/pg_loss", "actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/ppo_kl", "actor/entropy",
                "actor/grad_norm", "actor/lr"}
    assert expected <= set(metrics)
    assert metrics["actor/lr"] == pytest.approx(1e-5)
    assert all(isinstance(v, float) for v in metrics.values())


def test_micro_batches_grouped_by_length_trim_more_padding() -> None:
    data = make_batch(batch=8)
    order_free, _ = micro_batches(data, 2, by_length=False)
    grouped, order = micro_batches(data, 2, by_length=True)
    assert len(grouped) == len(order_free) == 4
    assert sorted(order.tolist()) == list(range(8))
    lengths = data.batch["attention_mask"].sum(-1)
    assert torch.equal(torch.cat([m.batch["attention_mask"].sum(-1) for m in grouped]), lengths[order])
    assert (lengths[order].diff() >= 0).all()

    def width(parts) -> int:  # columns the forward passes actually compute, after trim_padding
        return sum(trim_padding(*model_inputs(m.batch, torch.device("cpu")), R)[0].shape[1] * len(m) for m in parts)

    assert width(grouped) < width(order_free)
    rows = torch.arange(8.0).unsqueeze(1)
    assert torch.equal(unsort_rows(rows[order], order), rows)  # log-probs come back in the input order


@pytest.mark.slow
def test_micro_batch_partitions_change_neither_log_probs_nor_update(model) -> None:
    """Fixed row counts in input order, length-grouped, and token-budget micro-batches (use_dynamic_bsz): the
    same log-probs in the input order, the same update."""
    runs = []
    for overrides in ({"group_by_length": False}, {"group_by_length": True},
                      {"use_dynamic_bsz": True, "ppo_max_token_len_per_gpu": 64}):
        actor = fresh_actor(model, ppo_mini_batch_size=8, ppo_micro_batch_size_per_gpu=2, **overrides)
        data = make_batch(batch=8)
        lp, ent = actor.compute_log_prob(data, micro_batch_size=2, calculate_entropy=True,
                                         max_token_len=actor.cfg.token_budget)
        data.batch["old_log_probs"] = lp + 0.05 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(1))
        runs.append((lp, ent, actor.update_policy(data)))
    (lp0, ent0, m0), *others = runs
    for lp1, ent1, m1 in others:
        torch.testing.assert_close(lp0, lp1, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ent0, ent1, atol=1e-3, rtol=1e-3)
        for key in ("actor/pg_loss", "actor/grad_norm", "actor/pg_clipfrac", "actor/ppo_kl", "actor/entropy"):
            assert m0[key] == pytest.approx(m1[key], rel=1e-4, abs=2e-5), key


def test_token_budget_sizes_by_hand() -> None:
    # budget 12: [3, 3, 4] costs 3 x 4 = 12; 10 and 20 would pad it past 12; 20 exceeds it and goes alone
    assert token_budget_sizes([3, 3, 4, 10, 20], 12) == [3, 1, 1]
    # five groups asked: the costliest splittable group is halved until there are five
    assert token_budget_sizes([3, 3, 4, 10, 20], 12, count=4) == [1, 2, 1, 1]
    assert token_budget_sizes([3, 3, 4, 10, 20], 12, count=5) == [1, 1, 1, 1, 1]
    assert token_budget_sizes([7, 7, 7, 7], 1000) == [4]
    with pytest.raises(ValueError, match="cannot make 6 micro-batches of 5 rows"):
        token_budget_sizes([3, 3, 4, 10, 20], 12, count=6)


def test_token_budget_micro_batches_hold_the_budget() -> None:
    data = make_batch(batch=8)
    parts, order = micro_batches(data, 2, True, max_tokens=64)
    lengths = data.batch["attention_mask"].sum(-1)
    assert sorted(order.tolist()) == list(range(8)) and sum(len(p) for p in parts) == 8
    assert len({len(p) for p in parts}) > 1  # short rows share a micro-batch, long ones do not
    for p in parts:
        real = p.batch["attention_mask"].sum(-1)
        assert len(p) == 1 or len(p) * int(real.max()) <= 64
    assert torch.equal(torch.cat([p.batch["attention_mask"].sum(-1) for p in parts]), lengths[order])


def test_full_state_dict_casts_before_gathering(model) -> None:
    """The rollout engine's dtype: every floating tensor comes back in it, equal to the cast fp32 weights, tied
    weights still shared; without a dtype the fp32 master weights come back unchanged."""
    fresh_actor(model)
    fp32 = full_state_dict(model)
    bf16 = full_state_dict(model, dtype=torch.bfloat16)
    assert fp32.keys() == bf16.keys()
    for name, value in fp32.items():
        assert value.dtype == torch.float32
        assert bf16[name].dtype == torch.bfloat16
        assert torch.equal(bf16[name], value.to(torch.bfloat16)), name
    if "lm_head.weight" in bf16:  # the embedded model ties lm_head to the embeddings
        assert bf16["lm_head.weight"].data_ptr() == bf16["model.embed_tokens.weight"].data_ptr()


def test_build_optimizer_is_fused_adamw_with_the_reference_update() -> None:
    """The fused kernel (chosen on CPU/CUDA) gives the per-tensor loop's AdamW update."""
    torch.manual_seed(0)
    ours = torch.nn.Linear(16, 8)
    ref = torch.nn.Linear(16, 8)
    ref.load_state_dict(ours.state_dict())
    optim = OptimConfig(lr=1e-2, weight_decay=0.1, betas=[0.8, 0.95])
    opt = build_optimizer(ours, optim)
    assert opt.defaults["fused"] is True
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1, betas=(0.8, 0.95), foreach=False)
    for step in range(3):
        x = torch.randn(4, 16, generator=torch.Generator().manual_seed(step))
        for m, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
