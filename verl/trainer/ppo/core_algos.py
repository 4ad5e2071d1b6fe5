"""PPO-family algorithm math: pure tensor functions, no Ray/FSDP, all testable on CPU.

Shapes: B = batch (one row per response), R = response length. `response_mask [B, R]` is 1 on
tokens the policy wrote and 0 on padding and on observation tokens (the `<information>` blocks
inserted by the search loop). Every advantage/return is 0 where the mask is 0.

Contents
- masked statistics and `agg_loss` (token-mean, seq-mean-token-sum, seq-mean-token-mean,
  seq-mean-token-sum-norm);
- advantage estimators behind one registry and one signature (`register_adv_est`,
  `get_adv_estimator`): gae, grpo, grpo_no_std, reinforce, reinforce_plus_plus, rloo;
- losses: clipped policy loss with asymmetric and dual clip, entropy, clipped value loss;
- KL: per-token estimators (`kl_penalty`), fixed/adaptive controllers, KL-in-reward.

Actor loss sign. The worker composes `pg_loss - entropy_coeff * entropy + kl_coef * kl_loss`
(`combine_actor_loss`): the KL loss is ADDED, which penalises drift from the reference. The
original ZeroSearch subtracted it (rewarding drift); this is a deliberate fix.

Departures from upstream verl
- Multi-turn: gae and the returns-to-go of reinforce/reinforce_plus_plus carry across masked
  observation tokens (the recursion skips them) instead of resetting there; a reward that sits on a
  masked token is credited, undiscounted, to the policy token before it instead of being dropped.
- grpo/grpo_no_std/rloo group rows by a string uid (one per prompt) and reject non-string uids:
  the original ZeroSearch grouped by dataset index, which collides across datasets.
- seq-mean-token-sum-norm averages over sequences (sum / (B * R)) rather than summing over the
  micro-batch, so the loss does not grow with the micro-batch size.
- Empty masks give 0 (not NaN) in masked means.
"""

from __future__ import annotations

import inspect
import logging
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


# ----------------------------------------------------------------------------- masked statistics
def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over positions where mask is 1 (over all dims, or along `dim`); 0 where the mask is empty."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1e-8)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1e-8)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of x over the masked positions (Bessel-corrected when unbiased and more than one position)."""
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    count = mask.sum()
    if unbiased and count > 1:
        var = var * count / (count - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """(x - mean) / std over the masked positions; with shift_mean=False the mean is added back."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def agg_loss(loss_mat: Tensor, loss_mask: Tensor, loss_agg_mode: str) -> Tensor:
    """Reduce a per-token loss [B, R] to a scalar.

    token-mean: sum over all masked tokens / number of masked tokens.
    seq-mean-token-sum: per-sequence token sum, mean over sequences.
    seq-mean-token-mean: per-sequence token mean, mean over sequences.
    seq-mean-token-sum-norm (Dr.GRPO): per-sequence token sum / R (constant horizon), mean over sequences.
    """
    mask = loss_mask.to(loss_mat.dtype)
    if loss_agg_mode == "token-mean":
        return masked_mean(loss_mat, mask)
    seq_sum = (loss_mat * mask).sum(-1)  # [B]
    if loss_agg_mode == "seq-mean-token-sum":
        return seq_sum.mean()
    if loss_agg_mode == "seq-mean-token-mean":
        return (seq_sum / mask.sum(-1).clamp(min=1e-8)).mean()
    if loss_agg_mode == "seq-mean-token-sum-norm":
        return seq_sum.mean() / loss_mat.shape[-1]
    raise ValueError(f"unknown loss_agg_mode {loss_agg_mode!r}; known: {list(LOSS_AGG_MODES)}")


# ----------------------------------------------------------------------------- advantage registry
AdvEstimator = Callable[..., tuple[Tensor, Tensor]]
_ADV_ESTIMATORS: dict[str, AdvEstimator] = {}
_ADV_PARAMS = ("token_level_rewards", "response_mask", "values", "index", "gamma", "lam", "norm_adv_by_std", "epsilon")


def register_adv_est(name: str) -> Callable[[AdvEstimator], AdvEstimator]:
    """Register an advantage estimator under `name`; it must take exactly the shared keyword signature."""
    def decorator(fn: AdvEstimator) -> AdvEstimator:
        params = tuple(inspect.signature(fn).parameters)
        if params != _ADV_PARAMS:
            raise TypeError(f"advantage estimator {name!r} must take parameters {_ADV_PARAMS}, got {params}")
        if name in _ADV_ESTIMATORS and _ADV_ESTIMATORS[name] is not fn:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        _ADV_ESTIMATORS[name] = fn
        return fn
    return decorator


def get_adv_estimator(name: str) -> AdvEstimator:
    """The estimator registered as `name` (config key algorithm.adv_estimator)."""
    if name not in _ADV_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r} (algorithm.adv_estimator); "
                         f"known: {sorted(_ADV_ESTIMATORS)}")
    return _ADV_ESTIMATORS[name]


def list_adv_estimators() -> list[str]:
    return sorted(_ADV_ESTIMATORS)


def _group_rows(index: np.ndarray | None, batch_size: int, estimator: str) -> dict[str, list[int]]:
    """Row positions per group uid; uids must be strings (one per prompt), never dataset indices."""
    if index is None:
        raise ValueError(f"advantage estimator {estimator!r} needs `index` (the per-row group uid, "
                         "non_tensor_batch['uid'])")
    if len(index) != batch_size:
        raise ValueError(f"index has {len(index)} uids but the batch has {batch_size} rows")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, uid in enumerate(index):
        if not isinstance(uid, str):
            raise ValueError(f"index[{i}] is {uid!r} ({type(uid).__name__}); group uids must be strings unique per "
                             "prompt (e.g. a uuid4), not dataset indices, which collide across datasets")
        groups[uid].append(i)
    return groups


def _group_normalised_scores(scores: Tensor, groups: dict[str, list[int]], norm_by_std: bool,
                             epsilon: float) -> Tensor:
    """(r - group mean) [/ (group std + eps)] per row; a singleton group uses mean 0, std 1."""
    out = torch.empty_like(scores)  # [B]
    for rows in groups.values():
        idx = torch.tensor(rows, device=scores.device)
        group = scores[idx]
        if len(rows) == 1:
            mean, std = torch.zeros_like(group[0]), torch.ones_like(group[0])
        else:
            mean, std = group.mean(), group.std()  # unbiased std, as torch.std
        out[idx] = (group - mean) / (std + epsilon) if norm_by_std else group - mean
    return out


def _returns_to_go(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Discounted returns over policy tokens only (masked tokens skipped; their rewards credited to the
    preceding policy token). [B, R] -> [B, R], 0 on masked positions."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])  # [B]
    pending = torch.zeros_like(rewards[:, 0])  # [B] rewards seen on masked tokens since the last policy token
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        running = torch.where(m > 0, rewards[:, t] + pending + gamma * running, running)
        pending = torch.where(m > 0, torch.zeros_like(pending), pending + rewards[:, t])
        returns[:, t] = running * m
    return returns


@register_adv_est("gae")
def compute_gae_advantage_return(
    token_level_rewards: Tensor, response_mask: Tensor, values: Tensor | None = None,
    index: np.ndarray | None = None, gamma: float = 1.0, lam: float = 1.0, norm_adv_by_std: bool = True,
    epsilon: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """GAE (Schulman et al.) over policy tokens only; advantages whitened over the mask.

    token_level_rewards [B, R], values [B, R] -> advantages [B, R] (whitened), returns [B, R] = raw adv + values.
    At a policy token t the "next" value/advantage is that of the next unmasked token (0 past the end).
    """
    if values is None:
        raise ValueError("adv_estimator 'gae' needs critic values; enable the critic or pick grpo/reinforce/rloo")
    with torch.no_grad():
        mask = response_mask.to(token_level_rewards.dtype)
        values = values.to(token_level_rewards.dtype)
        B, R = token_level_rewards.shape
        next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
        last_gae = torch.zeros_like(next_value)
        pending = torch.zeros_like(next_value)
        advantages = torch.zeros_like(token_level_rewards)
        for t in reversed(range(R)):
            m = mask[:, t] > 0
            delta = token_level_rewards[:, t] + pending + gamma * next_value - values[:, t]
            gae_t = delta + gamma * lam * last_gae
            last_gae = torch.where(m, gae_t, last_gae)
            next_value = torch.where(m, values[:, t], next_value)
            pending = torch.where(m, torch.zeros_like(pending), pending + token_level_rewards[:, t])
            advantages[:, t] = torch.where(m, gae_t, torch.zeros_like(gae_t))
        returns = (advantages + values) * mask
        advantages = masked_whiten(advantages, mask) * mask
    return advantages, returns


@register_adv_est("grpo")
def compute_grpo_outcome_advantage(
    token_level_rewards: Tensor, response_mask: Tensor, values: Tensor | None = None,
    index: np.ndarray | None = None, gamma: float = 1.0, lam: float = 1.0, norm_adv_by_std: bool = True,
    epsilon: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """GRPO: outcome r = sum of token rewards; advantage (r - group mean) / (group std + eps) on every policy token.

    Set norm_adv_by_std=False for Dr.GRPO (same as 'grpo_no_std'). Returns (advantages, returns), equal, [B, R].
    """
    with torch.no_grad():
        mask = response_mask.to(token_level_rewards.dtype)
        scores = token_level_rewards.sum(-1)  # [B]
        groups = _group_rows(index, scores.shape[0], "grpo")
        adv = _group_normalised_scores(scores, groups, norm_adv_by_std, epsilon).unsqueeze(-1) * mask
    return adv, adv


@register_adv_est("grpo_no_std")
def compute_grpo_no_std_advantage(
    token_level_rewards: Tensor, response_mask: Tensor, values: Tensor | None = None,
    index: np.ndarray | None = None, gamma: float = 1.0, lam: float = 1.0, norm_adv_by_std: bool = False,
    epsilon: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """Dr.GRPO: r - group mean, no division by the group std (norm_adv_by_std is ignored)."""
    return compute_grpo_outcome_advantage(token_level_rewards, response_mask, values, index, gamma, lam,
                                          norm_adv_by_std=False, epsilon=epsilon)


@register_adv_est("reinforce")
def compute_reinforce_advantage(
    token_level_rewards: Tensor, response_mask: Tensor, values: Tensor | None = None,
    index: np.ndarray | None = None, gamma: float = 1.0, lam: float = 1.0, norm_adv_by_std: bool = True,
    epsilon: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """REINFORCE without baseline (the original ZeroSearch's estimator).

    gamma == 1: the raw outcome (sum of token rewards) on every policy token. gamma < 1: discounted
    returns-to-go over policy tokens. With the reward on the last policy token both agree at gamma=1.
    """
    with torch.no_grad():
        mask = response_mask.to(token_level_rewards.dtype)
        if gamma == 1.0:
            adv = token_level_rewards.sum(-1, keepdim=True) * mask
        else:
            adv = _returns_to_go(token_level_rewards, mask, gamma)
    return adv, adv


@register_adv_est("reinforce_plus_plus")
def compute_reinforce_plus_plus_advantage(
    token_level_rewards: Tensor, response_mask: Tensor, values: Tensor | None = None,
    index: np.ndarray | None = None, gamma: float = 1.0, lam: float = 1.0, norm_adv_by_std: bool = True,
    epsilon: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """REINFORCE++: discounted returns-to-go over policy tokens (returns), whitened over the batch (advantages)."""
    with torch.no_grad():
        mask = response_mask.to(token_level_rewards.dtype)
        returns = _returns_to_go(token_level_rewards, mask, gamma)
        advantages = masked_whiten(returns, mask) * mask
    return advantages, returns


@register_adv_est("rloo")
def compute_rloo_advantage(
    token_level_rewards: Tensor, response_mask: Tensor, values: Tensor | None = None,
    index: np.ndarray | None = None, gamma: float = 1.0, lam: float = 1.0, norm_adv_by_std: bool = True,
    epsilon: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """RLOO: r_i minus the mean outcome of the other responses of its group (singleton group: baseline 0)."""
    with torch.no_grad():
        mask = response_mask.to(token_level_rewards.dtype)
        scores = token_level_rewards.sum(-1)  # [B]
        adv = scores.clone()
        for rows in _group_rows(index, scores.shape[0], "rloo").values():
            n = len(rows)
            if n > 1:
                idx = torch.tensor(rows, device=scores.device)
                adv[idx] = scores[idx] - (scores[idx].sum() - scores[idx]) / (n - 1)
        adv = adv.unsqueeze(-1) * mask
    return adv, adv


# ----------------------------------------------------------------------------- losses
def compute_policy_loss(old_log_prob: Tensor, log_prob: Tensor, advantages: Tensor, response_mask: Tensor,
                        clip_ratio_low: float, clip_ratio_high: float, clip_ratio_c: float = 3.0,
                        loss_agg_mode: str = "token-mean") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PPO clipped surrogate with asymmetric clip (DAPO) and dual clip (Ye et al. 2020).

    Inputs [B, R]. ratio = exp(logp - old_logp); per token loss = max(-A*ratio, -A*clip(ratio, 1-low, 1+high)),
    and for A < 0 additionally capped at clip_ratio_c * |A|. Returns (pg_loss scalar, pg_clipfrac, ppo_kl,
    pg_clipfrac_lower); the last three are detached metrics.
    """
    if clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c (dual clip) must be > 1, got {clip_ratio_c}")
    mask = response_mask.to(log_prob.dtype)
    log_ratio = torch.clamp(log_prob - old_log_prob, -20.0, 20.0)  # [B, R], clamped for exp stability
    ratio = torch.exp(log_ratio)
    ppo_kl = masked_mean(-log_ratio, mask)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    loss_ppo = torch.maximum(loss_unclipped, loss_clipped)
    clipfrac = masked_mean((loss_clipped > loss_unclipped).to(mask.dtype), mask)
    loss_dual_cap = -advantages * clip_ratio_c  # = clip_ratio_c * |A| where A < 0
    negative = advantages < 0
    clipfrac_lower = masked_mean(((loss_ppo > loss_dual_cap) & negative).to(mask.dtype), mask)
    pg_losses = torch.where(negative, torch.minimum(loss_ppo, loss_dual_cap), loss_ppo)
    pg_loss = agg_loss(pg_losses, mask, loss_agg_mode)
    return pg_loss, clipfrac.detach(), ppo_kl.detach(), clipfrac_lower.detach()


def compute_entropy_loss(entropy: Tensor, response_mask: Tensor, loss_agg_mode: str = "token-mean") -> Tensor:
    """Aggregated token entropy [B, R] -> scalar (a bonus: the actor loss subtracts entropy_coeff * this)."""
    return agg_loss(entropy, response_mask, loss_agg_mode)


def compute_value_loss(vpreds: Tensor, returns: Tensor, values: Tensor, response_mask: Tensor, cliprange_value: float,
                       loss_agg_mode: str = "token-mean") -> tuple[Tensor, Tensor]:
    """Clipped value loss: 0.5 * agg(max((v - G)^2, (clip(v, v_old - c, v_old + c) - G)^2)). Inputs [B, R].

    Returns (vf_loss scalar, vf_clipfrac detached).
    """
    mask = response_mask.to(vpreds.dtype)
    vpred_clipped = torch.clamp(vpreds, values - cliprange_value, values + cliprange_value)
    err_unclipped = (vpreds - returns) ** 2
    err_clipped = (vpred_clipped - returns) ** 2
    vf_loss = 0.5 * agg_loss(torch.maximum(err_unclipped, err_clipped), mask, loss_agg_mode)
    vf_clipfrac = masked_mean((err_clipped > err_unclipped).to(mask.dtype), mask)
    return vf_loss, vf_clipfrac.detach()


def combine_actor_loss(pg_loss: Tensor, entropy_loss: Tensor | float, entropy_coeff: float,
                       kl_loss: Tensor | float | None, kl_coef: float) -> Tensor:
    """Actor objective = pg_loss - entropy_coeff * entropy + kl_coef * kl_loss (the KL is ADDED, unlike the original
    ZeroSearch, which subtracted it). kl_loss=None means no KL loss."""
    loss = pg_loss - entropy_coeff * entropy_loss
    if kl_loss is not None:
        loss = loss + kl_coef * kl_loss
    return loss


# ----------------------------------------------------------------------------- KL
KL_ESTIMATORS = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")


def _estimate_kl(log_prob: Tensor, ref_log_prob: Tensor, name: str) -> Tensor:
    diff = log_prob - ref_log_prob  # [B, R]
    if name in ("kl", "k1"):
        return diff
    if name == "abs":
        return diff.abs()
    if name in ("mse", "k2"):
        return 0.5 * diff.square()
    if name in ("low_var_kl", "k3"):
        log_r = torch.clamp(-diff, -20.0, 20.0)  # log(p_ref / p)
        return torch.clamp(torch.exp(log_r) - log_r - 1.0, -10.0, 10.0)
    raise ValueError(f"unknown kl_penalty {name!r} (algorithm.kl_penalty / actor.kl_loss_type); "
                     f"known: {list(KL_ESTIMATORS)}")


def kl_penalty(log_prob: Tensor, ref_log_prob: Tensor, kl_penalty: str = "low_var_kl") -> Tensor:
    """Per-token KL(pi || pi_ref) estimate [B, R] (Schulman's k1/k2/k3): kl|k1 = logp - ref, abs = |logp - ref|,
    mse|k2 = 0.5 (logp - ref)^2, low_var_kl|k3 = exp(ref - logp) - (ref - logp) - 1, clamped to [-10, 10]."""
    return _estimate_kl(log_prob, ref_log_prob, kl_penalty)


class FixedKLController:
    """Constant KL coefficient."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Proportional controller of Ziegler et al. 2019: value *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon."""

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: int) -> None:
        if target_kl <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL controller needs target_kl > 0 and horizon > 0, got {target_kl}, {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target_kl)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + error * n_steps / self.horizon


def get_kl_controller(type: str, kl_coef: float, target_kl: float | None = None,
                      horizon: int | None = None) -> FixedKLController | AdaptiveKLController:
    """Controller for algorithm.kl_ctrl.type: 'fixed' or 'adaptive' (needs target_kl and horizon)."""
    if type == "fixed":
        return FixedKLController(kl_coef)
    if type == "adaptive":
        if target_kl is None or horizon is None:
            raise ValueError("algorithm.kl_ctrl.type=adaptive needs algorithm.kl_ctrl.target_kl and .horizon")
        return AdaptiveKLController(kl_coef, target_kl, horizon)
    raise ValueError(f"unknown algorithm.kl_ctrl.type {type!r}; known: ['adaptive', 'fixed']")


def apply_kl_penalty(token_level_scores: Tensor, old_log_prob: Tensor, ref_log_prob: Tensor, response_mask: Tensor,
                     kl_ctrl: FixedKLController | AdaptiveKLController,
                     kl_penalty: str = "kl") -> tuple[Tensor, dict[str, float]]:
    """KL in the reward: rewards = scores - beta * kl * mask, all [B, R]; then kl_ctrl.update(batch KL, B).

    The reported KL is the mean over sequences of the per-sequence masked token mean; the coefficient is the one used.
    """
    mask = response_mask.to(token_level_scores.dtype)
    kld = _estimate_kl(old_log_prob, ref_log_prob, kl_penalty) * mask  # [B, R]
    beta = kl_ctrl.value
    token_level_rewards = token_level_scores - beta * kld
    current_kl = masked_mean(kld, mask, dim=-1).mean().item()
    kl_ctrl.update(current_kl=current_kl, n_steps=token_level_scores.shape[0])
    return token_level_rewards, {"actor/reward_kl_penalty": current_kl, "actor/reward_kl_penalty_coeff": beta}
