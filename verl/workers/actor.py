"""Data-parallel PPO actor: log-probs of responses and the clipped policy update on one FSDP rank.

Pure-ish: takes a module (FSDP2-sharded or plain), an optimizer and a scheduler; knows nothing of Ray.
Tensors follow verl's layout (`input_ids = cat(prompts, responses)`, `response_mask` 0 on observation
tokens and padding); the logits at positions P-1 .. P+R-2 score the R response tokens.

Gradient accumulation is exact: every micro-batch loss is rescaled so that the summed gradient equals the
gradient of the mini-batch loss, whatever the micro-batch size and the number of ranks:
- token-mean: scale = micro tokens / (valid tokens of the mini-batch summed over all ranks) * world_size
  (FSDP averages gradients over ranks, hence the world_size), so 1 rank == 2 ranks and micro 1 x accum 4
  == micro 4 x accum 1;
- seq-* modes: scale = micro rows / mini-batch rows (every rank holds the same number of rows).
verl scales token-mean per micro-batch instead, which weighs tokens of short micro-batches more.
Gradient reduction across ranks runs only on the last micro-batch of a mini-batch.

Micro-batches group rows of similar length (`group_by_length`, default on): the rows are sorted by their
real token count (stable) and cut into the same number of micro-batches as plain consecutive splitting, so
`trim_padding` drops more padding columns (a 40-token response no longer pads to a 128-token neighbour). The
partition does not change the loss or the gradient (the scales above are exact for any partition); log-prob
outputs are returned in the input order.

Extension: without `old_log_probs` in the batch the update is on-policy (one mini-batch, one epoch) and
uses the detached current log-probs as the old ones (ratio 1, same gradient), which saves the separate
old-log-prob forward pass. Metrics are per rank (the driver averages them over ranks with
`reduce_metrics`, which gives the exact mini-batch values).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from itertools import accumulate

import torch
import torch.distributed as dist
from torch import nn

from verl.protocol import DataProto
from verl.trainer.config import ActorConfig
from verl.trainer.ppo import core_algos
from verl.utils.logprob import score_tokens, supports_chunked_head
from verl.utils.memory_usage import trim_heap
from verl.workers.fsdp_utils import clip_grad_norm, trim_padding

logger = logging.getLogger(__name__)

TOKEN_MEAN_METRICS = ("actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/ppo_kl")  # token means in every mode


def dist_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def global_sum(value: float, device: torch.device, op: dist.ReduceOp = dist.ReduceOp.SUM) -> float:
    """Sum (or `op`) over ranks (identity without a process group)."""
    if dist_world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return float(t.item())


def minibatches(data: DataProto, mini_size: int, epochs: int, shuffle: bool, seed: int,
                key: str = "ppo_mini_batch_size") -> Iterator[DataProto]:
    """`epochs` passes over `data` in mini-batches of `mini_size` rows (len(data) must divide by it)."""
    n = len(data)
    mini_size = min(mini_size, n)
    if mini_size < 1 or n % mini_size:
        raise ValueError(f"{n} rows per worker do not split into mini-batches of {mini_size}: make {key} * "
                         "rollout.n / n_gpus_per_node divide the per-worker batch (train_batch_size * rollout.n / "
                         "n_gpus_per_node)")
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = data[torch.randperm(n, generator=gen)] if shuffle else data
        yield from order.split(mini_size)


def token_budget_sizes(lengths: list[int], max_tokens: int, count: int = 0) -> list[int]:
    """Sizes of consecutive groups of rows sorted by ascending length, each group padded to its longest row
    costing at most `max_tokens` (rows x longest length; a row longer than the budget goes alone), then split
    (the costliest group with >= 2 rows, halved) until there are at least `count` groups."""
    sizes: list[int] = []
    rows = longest = 0
    for n in lengths:
        if rows and (rows + 1) * max(longest, n) > max_tokens:
            sizes.append(rows)
            rows = longest = 0
        rows, longest = rows + 1, max(longest, n)
    if rows:
        sizes.append(rows)
    if count > len(lengths):
        raise ValueError(f"cannot make {count} micro-batches of {len(lengths)} rows")
    while len(sizes) < count:
        ends = [sum(sizes[: i + 1]) for i in range(len(sizes))]
        cost = [size * lengths[end - 1] if size > 1 else -1 for size, end in zip(sizes, ends)]
        i = cost.index(max(cost))
        sizes[i : i + 1] = [sizes[i] // 2, sizes[i] - sizes[i] // 2]
    return sizes


def micro_batches(data: DataProto, micro_size: int, by_length: bool, max_tokens: int = 0,
                  device: torch.device | str = "cpu") -> tuple[list[DataProto], torch.Tensor | None]:
    """ceil(n / micro_size) micro-batches; with `by_length` the rows are first sorted by attention-mask length
    (stable, so ties keep their order). Returns the parts and the sort order (None when unsorted); the rows of
    `torch.cat(parts)` are `data[order]`.

    `max_tokens` > 0 (verl's use_dynamic_bsz): micro-batches of length-sorted rows under a token budget
    instead of a fixed row count, so short rows share a forward and long ones do not pad their neighbours. A
    collective: every rank ends up with the same number of micro-batches (FSDP gathers weights in every forward,
    so unequal counts would hang), the largest count any rank needs (agreed on through `device`)."""
    if max_tokens > 0:
        lengths = data.batch["attention_mask"].sum(-1)
        order = torch.argsort(lengths, stable=True)
        sorted_lengths = lengths[order].tolist()
        count = int(global_sum(len(token_budget_sizes(sorted_lengths, max_tokens)), torch.device(device),
                               op=dist.ReduceOp.MAX))
        ends = list(accumulate(token_budget_sizes(sorted_lengths, max_tokens, count)))
        ordered = data[order]
        return [ordered[a:b] for a, b in zip([0, *ends[:-1]], ends)], order
    micro_size = max(1, micro_size)
    if not by_length or len(data) <= micro_size:
        return data.split(micro_size), None
    order = torch.argsort(data.batch["attention_mask"].sum(-1), stable=True)
    return data[order].split(micro_size), order


def unsort_rows(t: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Rows of `t` (computed on data[order]) back in the original order."""
    if order is None:
        return t
    out = torch.empty_like(t)
    out[order] = t
    return out


def micro_scales(mini: DataProto, micro_size: int, loss_agg_mode: str, mask_key: str, device: torch.device,
                 by_length: bool = False, max_tokens: int = 0) -> list[tuple[DataProto, float, float]]:
    """Split a mini-batch into micro-batches with (loss scale, token scale) each (see the module docstring).

    The token scale weighs token-mean metrics (clip fractions, ppo_kl) whatever the loss_agg_mode."""
    if loss_agg_mode not in core_algos.LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode {loss_agg_mode!r}; known: {list(core_algos.LOSS_AGG_MODES)}")
    micros, _ = micro_batches(mini, micro_size, by_length, max_tokens, device)
    total = global_sum(mini.batch[mask_key].sum().item(), device)
    world = dist_world_size()
    out = []
    for m in micros:
        token_scale = m.batch[mask_key].sum().item() * world / total if total > 0 else 0.0
        loss_scale = token_scale if loss_agg_mode == "token-mean" else len(m) / len(mini)
        out.append((m, loss_scale, token_scale))
    return out


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[labels] without materialising the full log-softmax. [b, r, V], [b, r] -> [b, r]."""
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position: -sum(p * log p), from the log-softmax (logsumexp - sum(p * logits)
    cancels large numbers: 4e-4 off a float64 reference on the embedded model, against 2e-5). [b, r, V] -> [b, r]."""
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask, position_ids) on `device`; position_ids default to cumsum(mask) - 1."""
    missing = [k for k in ("input_ids", "attention_mask", "responses") if k not in batch]
    if missing:
        raise ValueError(f"the batch lacks {missing}; it needs input_ids, attention_mask and responses (verl layout)")
    mask = batch["attention_mask"].to(device)
    pos = batch.get("position_ids")
    pos = (mask.cumsum(-1) - 1).clamp(min=0) if pos is None else pos.to(device)
    return batch["input_ids"].to(device), mask, pos


def response_mask_of(data: DataProto) -> torch.Tensor:
    """`response_mask`, or (verl's fallback) the response part of the attention mask."""
    if "response_mask" in data.batch:
        return data.batch["response_mask"]
    return data.batch["attention_mask"][:, -data.batch["responses"].shape[1]:]


class DataParallelPPOActor:
    """PPO actor on one rank. `rollout_n` turns ppo_mini_batch_size (prompts) into rows."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer | None,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None, cfg: ActorConfig, *, rollout_n: int = 1,
                 device: torch.device | str = "cpu") -> None:
        self.module, self.optimizer, self.scheduler, self.cfg = module, optimizer, scheduler, cfg
        self.rollout_n, self.device = rollout_n, torch.device(device)
        self._updates = 0
        self.chunked = cfg.entropy_from_logits_with_chunking and supports_chunked_head(module)
        if cfg.entropy_from_logits_with_chunking and not self.chunked:
            logger.info("%s has no plain linear lm_head: log-probs use full logits", type(module).__name__)

    # ------------------------------------------------------------------ forward
    def _forward(self, micro: DataProto, temperature: float, entropy: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Response log-probs [b, R] and entropy [b, R] (`entropy`: none | grad | metric, the latter detached)."""
        b = micro.batch
        responses = b["responses"].to(self.device)
        R = responses.shape[1]
        ids, mask, pos, kept = trim_padding(*model_inputs(b, self.device), R)
        real = b["attention_mask"][:, -R:].to(self.device)  # padding scores 0 in every micro-batch
        if self.chunked:
            log_probs, ent = score_tokens(self.module, ids, mask, pos, responses[:, :kept], real[:, :kept].bool(),
                                          temperature=temperature, chunk_size=self.cfg.logits_chunk_size,
                                          with_entropy=entropy != "none", checkpoint=self.cfg.entropy_checkpointing)
            ent = None if entropy == "none" else (ent.detach() if entropy == "metric" else ent)
        else:
            log_probs, ent = self._forward_full_logits(ids, mask, pos, responses[:, :kept], kept, temperature, entropy)
        if kept < R:  # trimmed right padding scores 0
            log_probs = nn.functional.pad(log_probs, (0, R - kept))
            ent = nn.functional.pad(ent, (0, R - kept)) if ent is not None else None
        real = real.to(log_probs.dtype)
        return log_probs * real, (ent * real if ent is not None else None)

    def _forward_full_logits(self, ids, mask, pos, labels, kept: int, temperature: float, entropy: str):
        """The plain path: vocabulary-wide logits of every kept position at once ([b, kept, V] fp32)."""
        out = self.module(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                          logits_to_keep=kept + 1)
        logits = out.logits[:, :-1].float()  # [b, kept, V]
        if temperature != 1.0:
            logits = logits / temperature
        log_probs = logprobs_from_logits(logits, labels)
        ent = None
        if entropy == "grad":
            ent = entropy_from_logits(logits)
        elif entropy == "metric":
            with torch.no_grad():
                ent = entropy_from_logits(logits.detach())
        return log_probs, ent

    @torch.no_grad()
    def compute_log_prob(self, data: DataProto, micro_batch_size: int, temperature: float = 1.0,
                         calculate_entropy: bool = False,
                         max_token_len: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs [B, R] (and entropy [B, R] if asked) of the responses, in micro-batches of `micro_batch_size`
        rows, or under a budget of `max_token_len` tokens when it is > 0 (a collective then: see micro_batches)."""
        if micro_batch_size < 1:
            raise ValueError(f"log_prob_micro_batch_size_per_gpu must be >= 1, got {micro_batch_size}")
        micros, order = micro_batches(data, micro_batch_size, self.cfg.group_by_length, max_token_len, self.device)
        outs = [self._forward(m, temperature, "metric" if calculate_entropy else "none") for m in micros]
        log_probs = unsort_rows(torch.cat([o[0] for o in outs]).cpu(), order)
        ent = unsort_rows(torch.cat([o[1] for o in outs]).cpu(), order) if calculate_entropy else None
        return log_probs, ent

    # ------------------------------------------------------------------ update
    def _micro_loss(self, micro: DataProto, temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, b = self.cfg, micro.batch
        mask = response_mask_of(micro).to(self.device)
        log_prob, ent = self._forward(micro, temperature, "grad" if cfg.entropy_coeff != 0 else "metric")
        old = b["old_log_probs"].to(self.device) if "old_log_probs" in b else log_prob.detach()
        low = cfg.clip_ratio_low if cfg.clip_ratio_low is not None else cfg.clip_ratio
        high = cfg.clip_ratio_high if cfg.clip_ratio_high is not None else cfg.clip_ratio
        pg_loss, clipfrac, ppo_kl, clipfrac_lower = core_algos.compute_policy_loss(
            old, log_prob, b["advantages"].to(self.device), mask, low, high, cfg.clip_ratio_c, cfg.loss_agg_mode)
        entropy_loss = core_algos.compute_entropy_loss(ent, mask, cfg.loss_agg_mode)
        kl_loss = None
        metrics = {"actor/pg_loss": pg_loss.item(), "actor/pg_clipfrac": clipfrac.item(),
                   "actor/ppo_kl": ppo_kl.item(), "actor/pg_clipfrac_lower": clipfrac_lower.item(),
                   "actor/entropy": entropy_loss.item()}
        if cfg.use_kl_loss:
            if "ref_log_prob" not in b:
                raise ValueError("actor.use_kl_loss=True needs ref_log_prob in the batch (compute_ref_log_prob)")
            kld = core_algos.kl_penalty(log_prob, b["ref_log_prob"].to(self.device), cfg.kl_loss_type)
            kl_loss = core_algos.agg_loss(kld, mask, cfg.loss_agg_mode)
            metrics["actor/kl_loss"] = kl_loss.item()
        loss = core_algos.combine_actor_loss(pg_loss, entropy_loss, cfg.entropy_coeff, kl_loss, cfg.kl_loss_coef)
        return loss, metrics

    def update_policy(self, data: DataProto) -> dict[str, float]:
        """ppo_epochs passes of mini-batch optimizer steps; one scheduler step per call. Returns rank metrics."""
        if self.optimizer is None:
            raise RuntimeError("this actor has no optimizer (a reference model cannot be updated)")
        cfg = self.cfg
        temperature = float(data.meta_info.get("temperature", 1.0))
        world = dist_world_size()
        mini_size = cfg.ppo_mini_batch_size * self.rollout_n // world
        on_policy = "old_log_probs" not in data.batch
        if on_policy and (cfg.ppo_epochs != 1 or min(mini_size, len(data)) != len(data)):
            raise ValueError("the batch has no old_log_probs: run compute_log_prob first (the on-policy shortcut "
                             "needs actor.ppo_epochs=1 and ppo_mini_batch_size equal to data.train_batch_size)")
        self.module.train()
        trim_heap()  # the generation and log-prob passes left freed heap behind: the update's peak starts lower
        sums: dict[str, float] = defaultdict(float)
        grad_norms: list[float] = []
        n_mini = 0
        for mini in minibatches(data, mini_size, cfg.ppo_epochs, cfg.shuffle, seed=self._updates):
            scaled = micro_scales(mini, cfg.ppo_micro_batch_size_per_gpu, cfg.loss_agg_mode,
                                  "response_mask" if "response_mask" in mini.batch else "attention_mask", self.device,
                                  by_length=cfg.group_by_length, max_tokens=cfg.token_budget)
            for i, (micro, scale, token_scale) in enumerate(scaled):
                if hasattr(self.module, "set_requires_gradient_sync"):  # FSDP2: reduce grads once per mini-batch
                    self.module.set_requires_gradient_sync(i == len(scaled) - 1)
                loss, metrics = self._micro_loss(micro, temperature)
                (loss * scale).backward()
                for k, v in metrics.items():
                    sums[k] += v * (token_scale if k in TOKEN_MEAN_METRICS else scale)
            grad_norms.append(self._step())
            n_mini += 1
        out = {k: v / n_mini for k, v in sums.items()}
        out["actor/grad_norm"] = sum(grad_norms) / len(grad_norms)
        if cfg.use_kl_loss:
            out["actor/kl_coef"] = cfg.kl_loss_coef
        if self.scheduler is not None:
            out["actor/lr"] = self.scheduler.get_last_lr()[0]
            self.scheduler.step()
        self._updates += 1
        return out

    def _step(self) -> float:
        """Clip, step (skipped on a non-finite norm, as in verl), zero grads; returns the pre-clip norm."""
        grad_norm = clip_grad_norm(self.module, self.cfg.grad_clip)
        if torch.isfinite(torch.tensor(grad_norm)):
            self.optimizer.step()
        else:
            logger.warning("grad norm is %s: skipping this optimizer step", grad_norm)
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm
