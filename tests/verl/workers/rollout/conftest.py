"""Fixtures shared by the rollout-engine tests: chat prompts as token ids and an HF reference model."""

from __future__ import annotations

import pytest
import torch

QUESTIONS = ["Who wrote 1984?", "What is the capital of France?", "Name three colors."]


@pytest.fixture(scope="session")
def tokenizer(embedded_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_path)


@pytest.fixture(scope="session")
def chat_prompts(tokenizer) -> list[list[int]]:
    """Three chat prompts of different lengths (so batches are really left-padded)."""
    out = []
    for q in QUESTIONS:
        enc = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        out.append(list(enc["input_ids"] if not isinstance(enc, list) else enc))
    assert len({len(p) for p in out}) > 1
    return out


@pytest.fixture(scope="module")
def hf_model(embedded_model_path):
    """The plain HF reference of the engine tests (fp32, one thread: the engine's worker busy-waits on a core)."""
    from transformers import AutoModelForCausalLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield AutoModelForCausalLM.from_pretrained(embedded_model_path, dtype=torch.float32).eval()
    torch.set_num_threads(threads)


def greedy_continuation(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation of `prompt` by a plain HF model (the reference for engines' greedy outputs)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(prompt) :].tolist()


def perturbed_state_dict(model: torch.nn.Module, scale: float = 0.02, seed: int = 0) -> dict[str, torch.Tensor]:
    """A copy of the model's weights with Gaussian noise on every matrix (embeddings included, ties kept)."""
    g = torch.Generator().manual_seed(seed)
    out, by_storage = {}, {}
    for name, value in model.state_dict().items():
        ptr = value.data_ptr()
        if ptr in by_storage:  # tied weights (lm_head = embed_tokens) stay identical
            out[name] = by_storage[ptr]
            continue
        value = value.detach().clone()
        if value.dim() == 2:
            value += scale * value.std() * torch.randn(value.shape, generator=g)
        out[name] = by_storage[ptr] = value
    return out


def hf_token_logprobs(model: torch.nn.Module, sequence: list[int]) -> torch.Tensor:
    """log p(token_t | tokens_<t) for t = 1..L-1 from a plain forward pass. [L-1]"""
    ids = torch.tensor([sequence])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)


@pytest.fixture(scope="session")
def hf_greedy():
    return greedy_continuation


@pytest.fixture(scope="session")
def perturb():
    return perturbed_state_dict


@pytest.fixture(scope="session")
def reference_logprobs():
    return hf_token_logprobs
