"""Turn per-sample token lists from a rollout into verl's padded batch tensors.

Conventions (verl's): `prompts` [B, P] left-padded; `responses` [B, R] right-padded; `input_ids` =
cat(prompts, responses) [B, P+R]; `attention_mask` [B, P+R] is 1 on every real token (observation tokens
included); `position_ids` = cumsum(attention_mask) - 1 clipped at 0; `response_mask` [B, R] is 1 on
policy-generated tokens only (the caller's mask; all real response tokens when none is given) and 0 on
padding. P and R are the longest prompt/response in the batch unless fixed sizes are given.
Over-long inputs are an error naming the config key, unless `truncate=True` (prompts lose tokens on the
left, responses on the right, as verl's dataset and rollout do).
"""

from __future__ import annotations

import torch


def _pad(rows: list[list[int]], width: int, value: int, left: bool) -> torch.Tensor:
    """rows -> [B, width] long tensor, each row padded on the left or right with `value`."""
    out = torch.full((len(rows), width), value, dtype=torch.long)
    if not rows or width == 0:
        return out
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    flat = torch.tensor([t for r in rows for t in r], dtype=torch.long)
    cols = torch.arange(width).expand(len(rows), width)
    if left:
        real = cols >= (width - lengths)[:, None]
    else:
        real = cols < lengths[:, None]
    out[real] = flat  # boolean indexing walks rows in order, tokens in order
    return out


def _fit(rows: list[list[int]], limit: int | None, key: str, truncate: bool, keep_right: bool) -> list[list[int]]:
    if limit is None:
        return rows
    if limit < 0:
        raise ValueError(f"{key} must be >= 0, got {limit}")
    too_long = [i for i, r in enumerate(rows) if len(r) > limit]
    if not too_long:
        return rows
    if not truncate:
        i = too_long[0]
        raise ValueError(
            f"sample {i} has {len(rows[i])} tokens, more than {key}={limit} ({len(too_long)} samples too long): "
            f"raise {key} or build the batch with truncate=True"
        )
    if keep_right:
        return [r[len(r) - limit :] if len(r) > limit else r for r in rows]
    return [r[:limit] for r in rows]


def build_rollout_batch(
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    response_masks: list[list[int]] | None,
    pad_token_id: int,
    max_prompt_length: int | None = None,
    max_response_length: int | None = None,
    truncate: bool = False,
) -> dict[str, torch.Tensor]:
    """Pad one rollout into `prompts`, `responses`, `input_ids`, `attention_mask`, `position_ids`, `response_mask`."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"prompt_ids has {len(prompt_ids)} samples but response_ids has {len(response_ids)}")
    if response_masks is not None:
        if len(response_masks) != len(response_ids):
            raise ValueError(
                f"response_masks has {len(response_masks)} samples but response_ids has {len(response_ids)}"
            )
        for i, (r, m) in enumerate(zip(response_ids, response_masks)):
            if len(r) != len(m):
                raise ValueError(f"sample {i}: response_masks has {len(m)} entries for {len(r)} response tokens")
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise ValueError(f"sample {i} has an empty prompt; every prompt needs at least one token")

    prompt_ids = _fit(prompt_ids, max_prompt_length, "data.max_prompt_length", truncate, keep_right=True)
    fitted = _fit(response_ids, max_response_length, "data.max_response_length", truncate, keep_right=False)
    if response_masks is not None and fitted is not response_ids:
        response_masks = [m[: len(r)] for m, r in zip(response_masks, fitted)]
    response_ids = fitted

    width_p = max_prompt_length if max_prompt_length is not None else max((len(p) for p in prompt_ids), default=0)
    width_r = max_response_length if max_response_length is not None else max((len(r) for r in response_ids), default=0)

    prompts = _pad(prompt_ids, width_p, pad_token_id, left=True)  # [B, P]
    responses = _pad(response_ids, width_r, pad_token_id, left=False)  # [B, R]
    prompt_real = _pad([[1] * len(p) for p in prompt_ids], width_p, 0, left=True)
    response_real = _pad([[1] * len(r) for r in response_ids], width_r, 0, left=False)
    if response_masks is None:
        response_mask = response_real.clone()
    else:
        response_mask = _pad([[int(bool(x)) for x in m] for m in response_masks], width_r, 0, left=False)
    attention_mask = torch.cat([prompt_real, response_real], dim=1)  # [B, P+R]
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return {
        "prompts": prompts,
        "responses": responses,
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "response_mask": response_mask,
    }
