"""core_algos against formulas re-derived here with plain Python loops over rows and tokens."""

import math
import statistics

import numpy as np
import pytest
import torch

from verl.trainer.ppo import core_algos as ca

TOL = dict(atol=1e-5, rtol=1e-5)

# Two responses; row 0 has an observation block (positions 2-3) and trailing padding (6-7).
MASK = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 0],
                     [1, 1, 1, 1, 1, 0, 0, 0]], dtype=torch.float32)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def py_whiten(vals: list[list[float]], mask: list[list[float]]) -> list[list[float]]:
    flat = [v for row, mrow in zip(vals, mask) for v, m in zip(row, mrow) if m]
    mean = sum(flat) / len(flat)
    var = sum((v - mean) ** 2 for v in flat) / (len(flat) - 1)
    return [[(v - mean) / math.sqrt(var + 1e-8) if m else 0.0 for v, m in zip(row, mrow)]
            for row, mrow in zip(vals, mask)]


# ----------------------------------------------------------------------------- masked statistics
def test_masked_mean_var_whiten():
    x, m = rand(2, 8), MASK
    vals = [v for row, mr in zip(x.tolist(), m.tolist()) for v, k in zip(row, mr) if k]
    assert ca.masked_mean(x, m).item() == pytest.approx(statistics.mean(vals), abs=1e-6)
    assert ca.masked_var(x, m).item() == pytest.approx(statistics.variance(vals), abs=1e-5)
    assert ca.masked_var(x, m, unbiased=False).item() == pytest.approx(statistics.pvariance(vals), abs=1e-5)
    per_row = ca.masked_mean(x, m, dim=-1)
    for i in range(2):
        row = [v for v, k in zip(x[i].tolist(), m[i].tolist()) if k]
        assert per_row[i].item() == pytest.approx(statistics.mean(row), abs=1e-6)
    w = ca.masked_whiten(x, m) * m
    torch.testing.assert_close(w, torch.tensor(py_whiten(x.tolist(), m.tolist())), **TOL)
    assert ca.masked_mean(x, torch.zeros_like(m)).item() == 0.0


@pytest.mark.parametrize("mode", ca.LOSS_AGG_MODES)
def test_agg_loss_modes(mode):
    loss, m = rand(2, 8, seed=1), MASK
    L, M = loss.tolist(), m.tolist()
    sums = [sum(x * k for x, k in zip(lr, mr)) for lr, mr in zip(L, M)]
    counts = [sum(mr) for mr in M]
    expected = {
        "token-mean": sum(sums) / sum(counts),
        "seq-mean-token-sum": sum(sums) / 2,
        "seq-mean-token-mean": sum(s / c for s, c in zip(sums, counts)) / 2,
        "seq-mean-token-sum-norm": sum(s / 8 for s in sums) / 2,
    }[mode]
    assert ca.agg_loss(loss, m, mode).item() == pytest.approx(expected, abs=1e-6)


def test_agg_loss_seq_modes_are_micro_batch_invariant_and_unknown_mode_raises():
    loss, m = rand(2, 8, seed=2), MASK
    for mode in ("seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        whole = ca.agg_loss(loss, m, mode)
        accumulated = sum(ca.agg_loss(loss[i:i + 1], m[i:i + 1], mode) for i in range(2)) / 2
        torch.testing.assert_close(whole, accumulated)
    with pytest.raises(ValueError, match="token-mean"):
        ca.agg_loss(loss, m, "sum")


# ----------------------------------------------------------------------------- GAE
def py_gae(r, v, m, gamma, lam):
    """GAE over policy tokens only: next value/advantage are those of the next unmasked token;
    rewards on masked tokens count for the policy token before them."""
    out = []
    for rr, vv, mm in zip(r, v, m):
        pos = [t for t in range(len(mm)) if mm[t]]
        adv = [0.0] * len(mm)
        next_v, next_a = 0.0, 0.0
        for k in reversed(range(len(pos))):
            t = pos[k]
            end = pos[k + 1] if k + 1 < len(pos) else len(mm)
            reward = rr[t] + sum(rr[j] for j in range(t + 1, end))
            delta = reward + gamma * next_v - vv[t]
            adv[t] = delta + gamma * lam * next_a
            next_v, next_a = vv[t], adv[t]
        out.append(adv)
    return out


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.8)])
def test_gae_carries_across_observation_tokens(gamma, lam):
    r, v = torch.zeros(2, 8), rand(2, 8, seed=3)
    r[0, 5], r[1, 4] = 1.0, -0.5  # outcome on the last policy token
    r[0, 1] = 0.25  # an intermediate reward
    adv, ret = ca.get_adv_estimator("gae")(r, MASK, values=v, index=None, gamma=gamma, lam=lam)
    raw = py_gae(r.tolist(), v.tolist(), MASK.tolist(), gamma, lam)
    expected_ret = [[(a + vv) * k for a, vv, k in zip(ar, vr, mr)]
                    for ar, vr, mr in zip(raw, v.tolist(), MASK.tolist())]
    torch.testing.assert_close(ret, torch.tensor(expected_ret), **TOL)
    torch.testing.assert_close(adv, torch.tensor(py_whiten(raw, MASK.tolist())), **TOL)
    # same as textbook GAE on row 0 with the observation columns deleted
    keep = [0, 1, 4, 5]
    rr, vv = [r[0, t].item() for t in keep], [v[0, t].item() for t in keep]
    a, textbook = 0.0, [0.0] * 4
    for t in reversed(range(4)):
        nv = vv[t + 1] if t + 1 < 4 else 0.0
        a = rr[t] + gamma * nv - vv[t] + gamma * lam * a
        textbook[t] = a
    torch.testing.assert_close(ret[0, keep], torch.tensor(textbook) + v[0, keep], **TOL)


def test_gae_credits_rewards_on_masked_tokens_and_needs_values():
    r, v = torch.zeros(2, 8), torch.zeros(2, 8)
    r[0, 7] = 1.0  # lands on padding after the last policy token (position 5)
    _, ret = ca.compute_gae_advantage_return(r, MASK, values=v)
    assert ret[0].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="values"):
        ca.get_adv_estimator("gae")(r, MASK, values=None)


# ----------------------------------------------------------------------------- group estimators
UIDS = np.array(["nq-0", "nq-0", "nq-0", "hotpotqa-0", "hotpotqa-0", "nq-1"], dtype=object)
SCORES = [1.0, 0.0, 0.5, 1.0, 1.0, 0.7]


def outcome_batch():
    mask = torch.ones(6, 5)
    mask[0, 3:] = 0
    mask[2, 1:3] = 0  # observation block
    r = torch.zeros(6, 5)
    for i, s in enumerate(SCORES):
        last = max(t for t in range(5) if mask[i, t])
        r[i, last] = s
    return r, mask


def py_group_adv(uids, scores, norm, eps):
    out = []
    for u, s in zip(uids, scores):
        group = [x for v, x in zip(uids, scores) if v == u]
        if len(group) == 1:
            mean, std = 0.0, 1.0
        else:
            mean, std = statistics.mean(group), statistics.stdev(group)
        out.append((s - mean) / (std + eps) if norm else s - mean)
    return out


@pytest.mark.parametrize("name,norm", [("grpo", True), ("grpo_no_std", False)])
def test_grpo_groups_by_string_uid_across_datasets(name, norm):
    r, mask = outcome_batch()
    adv, ret = ca.get_adv_estimator(name)(r, mask, values=None, index=UIDS, epsilon=1e-6)
    expected = py_group_adv(list(UIDS), SCORES, norm, 1e-6)
    torch.testing.assert_close(adv, torch.tensor(expected).unsqueeze(-1) * mask, **TOL)
    torch.testing.assert_close(ret, adv)
    # "nq-0" and "hotpotqa-0" share the dataset index 0 but are separate groups: the hotpotqa group is all 1.0
    assert adv[3].abs().sum().item() == 0.0 and adv[0, 0].item() > 0
    assert adv[5, 0].item() == pytest.approx(0.7 / (1 + 1e-6) if norm else 0.7, abs=1e-6)  # singleton group


def test_group_estimators_reject_integer_uids():
    r, mask = outcome_batch()
    with pytest.raises(ValueError, match="string"):
        ca.get_adv_estimator("grpo")(r, mask, index=np.array([0, 0, 0, 1, 1, 2]))
    with pytest.raises(ValueError, match="index"):
        ca.get_adv_estimator("rloo")(r, mask, index=None)
    with pytest.raises(ValueError, match="rows"):
        ca.get_adv_estimator("grpo")(r, mask, index=UIDS[:3])


def test_rloo_leave_one_out_baseline():
    r, mask = outcome_batch()
    adv, _ = ca.get_adv_estimator("rloo")(r, mask, index=UIDS)
    expected = []
    for i, u in enumerate(UIDS):
        others = [SCORES[j] for j in range(6) if UIDS[j] == u and j != i]
        expected.append(SCORES[i] - (sum(others) / len(others) if others else 0.0))
    torch.testing.assert_close(adv, torch.tensor(expected).unsqueeze(-1) * mask, **TOL)


def py_returns_to_go(r, m, gamma):
    out = []
    for rr, mm in zip(r, m):
        ret, g = [0.0] * len(mm), 0.0
        pos = [t for t in range(len(mm)) if mm[t]]
        for k in reversed(range(len(pos))):
            t = pos[k]
            end = pos[k + 1] if k + 1 < len(pos) else len(mm)
            g = rr[t] + sum(rr[j] for j in range(t + 1, end)) + gamma * g
            ret[t] = g
        out.append(ret)
    return out


def test_reinforce_outcome_broadcast_and_discounted():
    r, mask = outcome_batch()
    r[1, 0] = 0.3  # an intermediate reward (e.g. a format bonus)
    adv, ret = ca.get_adv_estimator("reinforce")(r, mask, index=UIDS, gamma=1.0)
    totals = r.sum(-1).tolist()
    torch.testing.assert_close(adv, torch.tensor(totals).unsqueeze(-1) * mask, **TOL)
    torch.testing.assert_close(ret, adv)
    adv, _ = ca.get_adv_estimator("reinforce")(r, mask, index=UIDS, gamma=0.9)
    torch.testing.assert_close(adv, torch.tensor(py_returns_to_go(r.tolist(), mask.tolist(), 0.9)), **TOL)
    # row 2: positions 1-2 are observation; token 0 sees the outcome at token 4 discounted over 2 policy steps
    assert adv[2, 0].item() == pytest.approx(0.5 * 0.9 ** 2, abs=1e-6)


def test_reinforce_plus_plus_whitened_returns_to_go():
    r, mask = outcome_batch()
    adv, ret = ca.get_adv_estimator("reinforce_plus_plus")(r, mask, index=UIDS, gamma=0.95)
    rtg = py_returns_to_go(r.tolist(), mask.tolist(), 0.95)
    torch.testing.assert_close(ret, torch.tensor(rtg), **TOL)
    torch.testing.assert_close(adv, torch.tensor(py_whiten(rtg, mask.tolist())), **TOL)


@pytest.mark.parametrize("name", ["gae", "grpo", "grpo_no_std", "reinforce", "reinforce_plus_plus", "rloo"])
def test_every_estimator_is_zero_on_masked_positions(name):
    r, mask = outcome_batch()
    adv, ret = ca.get_adv_estimator(name)(r, mask, values=rand(6, 5, seed=4), index=UIDS, gamma=0.9, lam=0.95,
                                          norm_adv_by_std=True, epsilon=1e-6)
    assert adv.shape == ret.shape == (6, 5)
    assert adv[mask == 0].abs().sum().item() == 0.0 and ret[mask == 0].abs().sum().item() == 0.0


def test_registry_errors():
    with pytest.raises(ValueError, match="grpo"):
        ca.get_adv_estimator("ppo")
    with pytest.raises(TypeError, match="parameters"):
        @ca.register_adv_est("bad")
        def bad(token_level_rewards, response_mask):
            return token_level_rewards, token_level_rewards
    assert "bad" not in ca.list_adv_estimators()


# ----------------------------------------------------------------------------- losses
def test_policy_loss_asymmetric_and_dual_clip():
    lo, hi, c = 0.2, 0.28, 3.0
    old = torch.zeros(1, 6)
    log_ratio = [math.log(1.25), math.log(1.5), math.log(0.75), 2.0, math.log(0.5), 0.0]
    advs = [1.0, 1.0, -1.0, -2.0, 0.5, 1.0]
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.float32)
    logp = torch.tensor([log_ratio], requires_grad=True)
    loss, clipfrac, kl, clipfrac_lower = ca.compute_policy_loss(old, logp, torch.tensor([advs]), mask, lo, hi, c)
    per_tok, clipped, lower = [], 0, 0
    for lr, a in zip(log_ratio[:5], advs[:5]):
        ratio = math.exp(lr)
        l1, l2 = -a * ratio, -a * min(max(ratio, 1 - lo), 1 + hi)
        loss_t = max(l1, l2)
        clipped += l2 > l1
        if a < 0:
            lower += loss_t > c * abs(a)
            loss_t = min(loss_t, c * abs(a))
        per_tok.append(loss_t)
    assert loss.item() == pytest.approx(sum(per_tok) / 5, abs=1e-5)
    assert clipfrac.item() == pytest.approx(clipped / 5) and clipfrac_lower.item() == pytest.approx(lower / 5)
    assert kl.item() == pytest.approx(-sum(log_ratio[:5]) / 5, abs=1e-6)
    assert clipped == 2 and lower == 1  # tokens 1 (above 1+hi) and 2 (below 1-lo); token 3 dual-clipped
    loss.backward()
    assert logp.grad[0, 0].item() != 0  # 1.25 < 1 + 0.28: not clipped by the asymmetric upper bound
    assert logp.grad[0, 1].item() == 0 and logp.grad[0, 3].item() == 0 and logp.grad[0, 5].item() == 0
    with pytest.raises(ValueError, match="clip_ratio_c"):
        ca.compute_policy_loss(old, logp, torch.tensor([advs]), mask, lo, hi, clip_ratio_c=1.0)


def test_entropy_and_value_loss():
    ent, mask = rand(2, 8, seed=5).abs(), MASK
    assert ca.compute_entropy_loss(ent, mask, "token-mean").item() == pytest.approx(
        ca.masked_mean(ent, mask).item())
    vpreds, returns, values = rand(2, 8, seed=6), rand(2, 8, seed=7), rand(2, 8, seed=8)
    loss, clipfrac = ca.compute_value_loss(vpreds, returns, values, mask, 0.2, "token-mean")
    terms, clipped, n = [], 0, 0
    for vp_r, g_r, v_r, m_r in zip(vpreds.tolist(), returns.tolist(), values.tolist(), mask.tolist()):
        for vp, g, v, m in zip(vp_r, g_r, v_r, m_r):
            if not m:
                continue
            vc = min(max(vp, v - 0.2), v + 0.2)
            terms.append(max((vp - g) ** 2, (vc - g) ** 2))
            clipped += (vc - g) ** 2 > (vp - g) ** 2
            n += 1
    assert loss.item() == pytest.approx(0.5 * sum(terms) / n, abs=1e-5)
    assert clipfrac.item() == pytest.approx(clipped / n)


def test_combine_actor_loss_adds_kl_and_subtracts_entropy():
    pg, ent, kl = torch.tensor(0.5), torch.tensor(2.0), torch.tensor(0.3, requires_grad=True)
    loss = ca.combine_actor_loss(pg, ent, 0.01, kl, 0.1)
    assert loss.item() == pytest.approx(0.5 - 0.01 * 2.0 + 0.1 * 0.3)
    loss.backward()
    assert kl.grad.item() == pytest.approx(0.1)  # more KL -> higher loss: the optimiser pulls toward the reference
    assert ca.combine_actor_loss(pg, ent, 0.0, None, 0.1).item() == pytest.approx(0.5)


# ----------------------------------------------------------------------------- KL
@pytest.mark.parametrize("name", ca.KL_ESTIMATORS)
def test_kl_estimators(name):
    logp = torch.tensor([[-1.0, -2.0, -0.5, -20.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -5.0]])
    out = ca.kl_penalty(logp, ref, name)
    for j in range(4):
        lp, rf = logp[0, j].item(), ref[0, j].item()
        expected = {
            "kl": lp - rf, "k1": lp - rf, "abs": abs(lp - rf),
            "mse": 0.5 * (lp - rf) ** 2, "k2": 0.5 * (lp - rf) ** 2,
            "low_var_kl": min(10.0, max(-10.0, math.exp(rf - lp) - (rf - lp) - 1)),
        }
        expected["k3"] = expected["low_var_kl"]
        assert out[0, j].item() == pytest.approx(expected[name], abs=1e-5)
    if name in ("low_var_kl", "k3"):
        assert out[0, 3].item() == 10.0  # clamped
    assert out.shape == (1, 4)


def test_kl_unknown_name_and_controllers():
    with pytest.raises(ValueError, match="low_var_kl"):
        ca.kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "full")
    fixed = ca.get_kl_controller("fixed", 0.1)
    fixed.update(5.0, 100)
    assert fixed.value == 0.1
    ctl = ca.get_kl_controller("adaptive", 0.2, target_kl=0.05, horizon=1000)
    ctl.update(0.06, 100)  # error 0.2 -> x (1 + 0.2 * 0.1)
    assert ctl.value == pytest.approx(0.2 * 1.02)
    ctl.update(1.0, 100)  # error clipped to 0.2
    assert ctl.value == pytest.approx(0.2 * 1.02 * 1.02)
    ctl.update(0.0, 500)  # error -1 clipped to -0.2 -> x (1 - 0.1)
    assert ctl.value == pytest.approx(0.2 * 1.02 * 1.02 * 0.9)
    with pytest.raises(ValueError, match="target_kl"):
        ca.get_kl_controller("adaptive", 0.2)
    with pytest.raises(ValueError, match="fixed"):
        ca.get_kl_controller("pid", 0.2)


def test_apply_kl_penalty():
    scores = torch.zeros(2, 8)
    scores[0, 5], scores[1, 4] = 1.0, 0.0
    old, ref = rand(2, 8, seed=9), rand(2, 8, seed=10)
    ctl = ca.AdaptiveKLController(0.1, target_kl=0.01, horizon=100)
    rewards, metrics = ca.apply_kl_penalty(scores, old, ref, MASK, ctl, kl_penalty="kl")
    per_seq = []
    for i in range(2):
        kls = [old[i, t].item() - ref[i, t].item() for t in range(8) if MASK[i, t]]
        per_seq.append(sum(kls) / len(kls))
        for t in range(8):
            k = (old[i, t].item() - ref[i, t].item()) * MASK[i, t].item()
            assert rewards[i, t].item() == pytest.approx(scores[i, t].item() - 0.1 * k, abs=1e-6)
    current = sum(per_seq) / 2
    assert metrics["actor/reward_kl_penalty"] == pytest.approx(current, abs=1e-6)
    assert metrics["actor/reward_kl_penalty_coeff"] == pytest.approx(0.1)
    err = min(0.2, max(-0.2, current / 0.01 - 1))
    assert ctl.value == pytest.approx(0.1 * (1 + err * 2 / 100))
