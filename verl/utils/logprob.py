"""Token log-probs and entropy from a causal LM's final hidden states, with bounded vocabulary-wide memory.

The plain path (`model(...).logits`) materialises fp32 logits [rows, positions, V] for every scored position of a
micro-batch, plus softmax and gradient temporaries of the same size: 14 bytes per position per vocabulary entry,
~3.3 GB per 1,536-token row for Qwen2.5's 152k vocabulary, and most of the 13.9 GB peak of one fp32 micro-batch of
8 x 832 tokens of the embedded model. Here the decoder runs once, the hidden states of the scored positions (only the
real ones: padding is dropped) are kept, and the lm_head is applied `chunk_size` positions at a time:

- `checkpoint=True` (verl's `entropy_checkpointing`): a custom autograd function keeps only the hidden states, the
  labels and one logsumexp per position; backward recomputes each chunk's logits and writes its gradient directly
  (d logp / dz = onehot - p; d entropy / dz = -p (log p - E_p[log p])), so at most one chunk's logits are alive in
  forward and in backward.
- `checkpoint=False`: ordinary autograd per chunk (every chunk's logits stay alive until backward; the forward-only
  passes still peak at one chunk).

`score_tokens(model, ...)` is the entry point; `attach_token_scorer(model)` registers it as an FSDP2 forward
method (`register_fsdp_forward_method`), so the sharded root parameters (embeddings, tied lm_head, final norm) are
gathered around it exactly as around `forward`. Models whose head is not a bias-free linear layer over the last
hidden state (logit soft-capping, logit scaling) are refused by `supports_chunked_head`; the caller then takes the
plain path. Unlike verl, which chunks only the entropy (and computes log-probs from full logits unless a fused
kernel is installed), both quantities are chunked here, with no extra dependency.
"""

from __future__ import annotations

import types

import torch
from torch import nn
from torch.nn import functional as F

SCORER = "score_tokens"
_UNSUPPORTED_CONFIG = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def supports_chunked_head(model: nn.Module) -> bool:
    """True for HF causal LMs whose logits are `lm_head(last_hidden_state)` with a bias-free linear head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear) or head.bias is not None or not hasattr(model, "get_decoder"):
        return False
    cfg = getattr(model, "config", None)
    return not any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in _UNSUPPORTED_CONFIG)


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.linear(h, weight).float()  # [c, V]
    return z.div_(temperature) if temperature != 1.0 else z


class _ChunkedLogProbEntropy(torch.autograd.Function):
    """hidden [N, H], weight [V, H], labels [N] -> (log p(labels) [N], entropy [N]), both fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, temperature: float, chunk: int, with_entropy: bool):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logp)
        ent = torch.zeros_like(logp)
        for s in range(0, n, chunk):
            lp = _chunk_logits(hidden[s:s + chunk], weight, temperature)  # [c, V]
            lse_c = torch.logsumexp(lp, dim=-1)
            lp.sub_(lse_c[:, None])  # log-softmax: small numbers, so the entropy keeps its fp32 precision
            lse[s:s + chunk] = lse_c
            logp[s:s + chunk] = lp.gather(-1, labels[s:s + chunk, None]).squeeze(-1)
            if with_entropy:
                ent[s:s + chunk] = -torch.linalg.vecdot(torch.exp(lp), lp)
            del lp
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.set_materialize_grads(False)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, labels, lse = ctx.saved_tensors
        t, chunk = ctx.temperature, ctx.chunk
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk]
            lp = _chunk_logits(h, weight, t).sub_(lse[s:s + chunk, None])  # log-softmax [c, V]
            p = torch.exp(lp)
            # dz = gl * (onehot - p) - ge * p * (lp - E_p[lp]) = p * (-gl - ge * (lp - E_p[lp])) + gl * onehot,
            # built in the log-softmax buffer: two [c, V] buffers alive, not three
            gl = g_logp[s:s + chunk, None] if g_logp is not None else None
            if g_ent is not None:
                lp.sub_(torch.linalg.vecdot(p, lp)[:, None]).mul_(-g_ent[s:s + chunk, None])
                if gl is not None:
                    lp.sub_(gl)
            elif gl is not None:
                lp.copy_(gl.neg().expand_as(lp))
            else:
                lp.zero_()
            g = lp.mul_(p)
            del p
            if gl is not None:
                g.scatter_add_(-1, labels[s:s + chunk, None], gl)
            if t != 1.0:
                g.div_(t)
            g = g.to(hidden.dtype)
            if need_h:
                grad_h[s:s + chunk] = g @ weight
            if need_w and g.dtype == grad_w.dtype:
                grad_w.addmm_(g.t(), h)  # no [V, H] temporary
            elif need_w:
                grad_w.add_(g.t() @ h)
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None, None, None


def logprob_entropy_chunked(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, temperature: float,
                            chunk_size: int, with_entropy: bool, checkpoint: bool = True
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [N, H] (positions that predict `labels` [N]) -> (log-probs [N], entropy [N]) in fp32.

    Entropy is zeros when `with_entropy` is False."""
    if chunk_size < 1:
        raise ValueError(f"actor_rollout_ref.actor.logits_chunk_size must be >= 1, got {chunk_size}")
    if checkpoint:
        return _ChunkedLogProbEntropy.apply(hidden, weight, labels, float(temperature), int(chunk_size),
                                            bool(with_entropy))
    logps, ents = [], []
    for s in range(0, hidden.shape[0], chunk_size):
        lp = torch.log_softmax(_chunk_logits(hidden[s:s + chunk_size], weight, temperature), dim=-1)
        logps.append(lp.gather(-1, labels[s:s + chunk_size, None]).squeeze(-1))
        ents.append(-(lp.exp() * lp).sum(-1) if with_entropy else torch.zeros_like(logps[-1]))
    if not logps:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(logps), torch.cat(ents)


def _score_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                  labels: torch.Tensor, valid: torch.Tensor, *, temperature: float = 1.0, chunk_size: int = 512,
                  with_entropy: bool = False, checkpoint: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropy of `labels` [b, k], the last k tokens of `input_ids` [b, L], scored at the positions
    that predict them; `valid` [b, k] marks the positions to compute (the others are 0). Returns two [b, k] fp32."""
    b, k = labels.shape
    out = self.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False)
    hidden = out.last_hidden_state[:, -k - 1:-1]  # [b, k, H]: position t predicts token t + 1
    rows, cols = valid.nonzero(as_tuple=True)  # only real positions reach the head
    logp, ent = logprob_entropy_chunked(hidden[rows, cols], self.get_output_embeddings().weight, labels[rows, cols],
                                        temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy,
                                        checkpoint=checkpoint)
    zeros = torch.zeros(b, k, dtype=torch.float32, device=labels.device)
    return zeros.index_put((rows, cols), logp), zeros.index_put((rows, cols), ent)


def attach_token_scorer(model: nn.Module) -> nn.Module:
    """Give `model` a `score_tokens` method (idempotent); under FSDP2 it runs inside the root's forward hooks."""
    if getattr(model, "_has_token_scorer", False):
        return model
    setattr(model, SCORER, types.MethodType(_score_tokens, model))
    from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

    if isinstance(model, FSDPModule):
        register_fsdp_forward_method(model, SCORER)
    model._has_token_scorer = True
    return model


def score_tokens(model: nn.Module, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """`model.score_tokens(...)`, attaching it first when needed (see `_score_tokens` for the arguments)."""
    return getattr(attach_token_scorer(model), SCORER)(*args, **kwargs)
