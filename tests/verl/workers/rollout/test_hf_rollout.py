"""HF rollout engine on the embedded model: greedy parity with `generate`, stops, n ordering, logprobs, weights."""

from __future__ import annotations

import pytest
import torch

from verl.workers.rollout import SamplingParams, build_rollout_engine
from verl.workers.rollout.hf_rollout import HFRollout, sample_next_token


@pytest.fixture(scope="module")
def engine(embedded_model_path) -> HFRollout:
    # One intra-op thread: with other jobs on the 2 cores, 2 OpenMP threads ran ~15x slower than 1.
    threads = torch.get_num_threads()
    eng = build_rollout_engine("hf", embedded_model_path, max_model_len=512, max_num_seqs=8, cpu_threads=1)
    yield eng
    eng.close()
    torch.set_num_threads(threads)


def greedy(max_tokens: int = 24, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)


@pytest.fixture(scope="module")
def free_greedy(engine, chat_prompts):
    """Greedy continuations (40 tokens max, no stop strings) of the three chat prompts, with logprobs."""
    return engine.generate(chat_prompts, greedy(40, logprobs=True))


def test_greedy_batch_matches_unpadded_hf_generate(engine, chat_prompts, free_greedy):
    assert len(free_greedy) == len(chat_prompts)
    for prompt, out in zip(chat_prompts, free_greedy):
        ref = engine.model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt) :]
        assert out.token_ids[:12] == ref.tolist()
    again = engine.generate(chat_prompts, greedy(12))
    assert [o.token_ids for o in again] == [o.token_ids[:12] for o in free_greedy]


def test_eos_is_kept_and_finish_reasons(engine, chat_prompts, tokenizer, free_greedy):
    france = free_greedy[1]  # "The capital of France is Paris.<|im_end|>"
    assert france.token_ids[-1] == tokenizer.eos_token_id
    assert (france.finish_reason, france.stop_reason) == ("stop", None)
    assert tokenizer.eos_token_id not in france.token_ids[:-1]
    assert free_greedy[0].finish_reason == "length" and len(free_greedy[0].token_ids) == 40
    short = engine.generate(chat_prompts[1:2], greedy(3))[0]
    assert len(short.token_ids) == 3 and short.finish_reason == "length" and short.stop_reason is None


@pytest.mark.parametrize("stop", [["."], ["Paris", " is"]])
def test_stop_strings_end_each_row_exactly(engine, chat_prompts, tokenizer, free_greedy, stop):
    outs = engine.generate(chat_prompts, greedy(40, stop=stop))
    stopped = 0
    for full, out in zip(free_greedy, outs):
        assert full.token_ids[: len(out.token_ids)] == out.token_ids  # same greedy path, cut short
        if out.stop_reason is None:
            continue
        stopped += 1
        text = tokenizer.decode(out.token_ids, skip_special_tokens=True)
        before = tokenizer.decode(out.token_ids[:-1], skip_special_tokens=True)
        assert out.stop_reason in text and not any(s in before for s in stop)  # nothing generated past it
        assert out.finish_reason == "stop"
    assert stopped >= 2
    if stop == ["."]:
        assert len({len(o.token_ids) for o in outs}) > 1  # rows stop at different steps


def test_n_samples_are_prompt_major(engine, chat_prompts, free_greedy):
    outs = engine.generate(chat_prompts[:2], greedy(6, n=3))
    singles = [o.token_ids[:6] for o in free_greedy[:2]]
    assert [o.token_ids for o in outs] == [singles[0]] * 3 + [singles[1]] * 3
    sampled = engine.generate(chat_prompts[:2], SamplingParams(n=3, max_tokens=8, seed=7))
    again = engine.generate(chat_prompts[:2], SamplingParams(n=3, max_tokens=8, seed=7))
    assert [o.token_ids for o in sampled] == [o.token_ids for o in again]
    assert len({tuple(o.token_ids) for o in sampled[:3]}) > 1


def test_logprobs_are_raw_model_logprobs(engine, chat_prompts, reference_logprobs, free_greedy):
    sampled = SamplingParams(temperature=0.7, top_k=20, max_tokens=10, logprobs=True, seed=1)
    for out in (free_greedy[0], engine.generate(chat_prompts[:1], sampled)[0]):
        ref = reference_logprobs(engine.model, chat_prompts[0] + out.token_ids)[len(chat_prompts[0]) - 1 :]
        assert len(out.logprobs) == len(out.token_ids)
        torch.testing.assert_close(torch.tensor(out.logprobs), ref, atol=1e-4, rtol=0)


def test_sampler_top_k_and_top_p_restrict_support():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(400, 1)
    g = torch.Generator().manual_seed(0)
    top2 = sample_next_token(logits, SamplingParams(top_k=2), g)
    assert set(top2.tolist()) == {0, 1}
    probs = logits[0].softmax(-1)  # 0.64, 0.24, ...: top_p=0.8 keeps the first two tokens
    top_p = sample_next_token(logits, SamplingParams(top_p=0.8), g)
    assert set(top_p.tolist()) == {0, 1} and probs[0] < 0.8 < probs[:2].sum()
    assert set(sample_next_token(logits, SamplingParams(top_p=0.5), g).tolist()) == {0}
    assert sample_next_token(logits, SamplingParams(temperature=0.0), g).eq(0).all()


def test_update_weights_changes_and_restores_outputs(engine, chat_prompts, perturb):
    original = {k: v.clone() for k, v in engine.model.state_dict().items()}
    before = engine.generate(chat_prompts, greedy(8, logprobs=True))
    try:
        noisy = perturb(engine.model, scale=0.5)
        engine.update_weights(noisy)
        embed = engine.model.get_input_embeddings().weight
        torch.testing.assert_close(embed, noisy["model.embed_tokens.weight"])
        assert engine.model.get_output_embeddings().weight.data_ptr() == embed.data_ptr()  # still tied
        after = engine.generate(chat_prompts, greedy(8, logprobs=True))
        assert [o.token_ids for o in after] != [o.token_ids for o in before]
        with pytest.raises(ValueError, match="unexpected"):
            engine.update_weights({**noisy, "model.extra.weight": torch.zeros(1)})
    finally:
        engine.update_weights(original)
    restored = engine.generate(chat_prompts, greedy(8, logprobs=True))
    assert [o.token_ids for o in restored] == [o.token_ids for o in before]
    assert [o.logprobs for o in restored] == [o.logprobs for o in before]


def test_bad_inputs_name_the_problem(engine, chat_prompts):
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate([[1] * 600], greedy(4))
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], greedy(4))
    with pytest.raises(ValueError, match="temperature"):
        engine.generate(chat_prompts, SamplingParams(temperature=-1.0))


def test_per_prompt_token_caps(engine, chat_prompts, free_greedy):
    caps = [3, 7, 24]
    outs = engine.generate(chat_prompts, greedy(24, n=2, max_tokens_per_prompt=caps))
    for i, cap in enumerate(caps):
        full = free_greedy[i].token_ids
        for out in outs[2 * i:2 * i + 2]:
            assert out.token_ids == full[:cap]  # the same greedy tokens, stopped at the prompt's own cap
            assert out.finish_reason == ("length" if len(full) > cap else free_greedy[i].finish_reason)
    with pytest.raises(ValueError, match="2 entries for 3 prompts"):
        engine.generate(chat_prompts, greedy(24, max_tokens_per_prompt=[3, 4]))
    with pytest.raises(ValueError, match=">= 1"):
        engine.generate(chat_prompts, greedy(24, max_tokens_per_prompt=[3, 0, 4]))
