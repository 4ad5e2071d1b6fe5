"""build_rollout_batch: padding sides, masks, position ids, fixed sizes, truncation and errors."""

from __future__ import annotations

import pytest
import torch

from verl.utils.rollout_batch import build_rollout_batch

PAD = 0


def test_shapes_padding_sides_and_masks():
    prompts = [[11, 12, 13], [21]]
    responses = [[31, 32], [41, 42, 43, 44]]
    masks = [[1, 1], [1, 0, 0, 1]]  # sample 1: tokens 42, 43 are an observation
    b = build_rollout_batch(prompts, responses, masks, pad_token_id=PAD)
    assert b["prompts"].tolist() == [[11, 12, 13], [PAD, PAD, 21]]
    assert b["responses"].tolist() == [[31, 32, PAD, PAD], [41, 42, 43, 44]]
    assert b["input_ids"].tolist() == [[11, 12, 13, 31, 32, PAD, PAD], [PAD, PAD, 21, 41, 42, 43, 44]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 4, 4], [0, 0, 0, 1, 2, 3, 4]]
    assert b["response_mask"].tolist() == [[1, 1, 0, 0], [1, 0, 0, 1]]
    assert all(t.dtype == torch.long for t in b.values())


def test_default_mask_fixed_sizes_and_empty_response():
    b = build_rollout_batch([[5, 6]], [[]], None, pad_token_id=PAD, max_prompt_length=4, max_response_length=3)
    assert b["prompts"].tolist() == [[PAD, PAD, 5, 6]]
    assert b["responses"].tolist() == [[PAD] * 3]
    assert b["response_mask"].tolist() == [[0, 0, 0]]
    assert b["attention_mask"].tolist() == [[0, 0, 1, 1, 0, 0, 0]]
    b = build_rollout_batch([[5]], [[7, 8]], None, pad_token_id=PAD)
    assert b["response_mask"].tolist() == [[1, 1]] and b["input_ids"].shape == (1, 3)


def test_over_long_inputs_error_or_truncate():
    with pytest.raises(ValueError, match="data.max_prompt_length"):
        build_rollout_batch([[1, 2, 3]], [[4]], None, PAD, max_prompt_length=2)
    with pytest.raises(ValueError, match="data.max_response_length"):
        build_rollout_batch([[1]], [[4, 5, 6]], None, PAD, max_response_length=2)
    b = build_rollout_batch([[1, 2, 3]], [[4, 5, 6]], [[1, 0, 1]], PAD, 2, 2, truncate=True)
    assert b["prompts"].tolist() == [[2, 3]]  # prompt keeps its end
    assert b["responses"].tolist() == [[4, 5]]  # response keeps its start
    assert b["response_mask"].tolist() == [[1, 0]]


def test_inconsistent_inputs_are_rejected():
    with pytest.raises(ValueError, match="response_ids has 1"):
        build_rollout_batch([[1], [2]], [[3]], None, PAD)
    with pytest.raises(ValueError, match="response_masks has 1 entries for 2"):
        build_rollout_batch([[1]], [[3, 4]], [[1]], PAD)
    with pytest.raises(ValueError, match="empty prompt"):
        build_rollout_batch([[]], [[3]], None, PAD)


def test_matches_a_plain_loop_on_random_batches():
    g = torch.Generator().manual_seed(0)
    lens_p = torch.randint(1, 9, (16,), generator=g).tolist()
    lens_r = torch.randint(0, 9, (16,), generator=g).tolist()
    prompts = [torch.randint(1, 100, (n,), generator=g).tolist() for n in lens_p]
    responses = [torch.randint(1, 100, (n,), generator=g).tolist() for n in lens_r]
    masks = [torch.randint(0, 2, (n,), generator=g).tolist() for n in lens_r]
    b = build_rollout_batch(prompts, responses, masks, PAD)
    P, R = max(lens_p), max(lens_r)
    for i in range(16):
        ids = [PAD] * (P - lens_p[i]) + prompts[i] + responses[i] + [PAD] * (R - lens_r[i])
        att = [0] * (P - lens_p[i]) + [1] * (lens_p[i] + lens_r[i]) + [0] * (R - lens_r[i])
        pos, seen = [], 0
        for a in att:
            seen += a
            pos.append(max(seen - 1, 0))
        assert b["input_ids"][i].tolist() == ids
        assert b["attention_mask"][i].tolist() == att
        assert b["position_ids"][i].tolist() == pos
        assert b["response_mask"][i].tolist() == masks[i] + [0] * (R - lens_r[i])
