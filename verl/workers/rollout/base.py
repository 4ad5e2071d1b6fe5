"""The rollout-engine interface shared by the `hf` and `vllm` engines.

Token ids in, token ids out: the multi-turn generation manager keeps every trajectory as token ids,
appends observation tokens, and asks the engine to continue. Generation stops at EOS, at `max_tokens`,
or at one of `stop` strings; the stop string is part of the output (`include_stop_str_in_output`) and
no token is generated past it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@dataclass
class SamplingParams:
    n: int = 1  # samples per prompt; outputs are prompt-major: p0s0, p0s1, ..., p1s0, ...
    temperature: float = 1.0  # 0 -> greedy
    top_p: float = 1.0
    top_k: int = -1  # -1: disabled
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False  # return the sampled tokens' log-probs
    seed: int | None = None
    # per-prompt caps (prompt i: at most min(max_tokens, max_tokens_per_prompt[i]) tokens), so a multi-turn row
    # with little budget left stops there instead of generating tokens the manager would cut away
    max_tokens_per_prompt: list[int] | None = None

    def validate(self, n_prompts: int | None = None) -> None:
        if self.n < 1:
            raise ValueError(f"rollout n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"rollout temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"rollout top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"rollout max_tokens must be >= 1, got {self.max_tokens}")
        caps = self.max_tokens_per_prompt
        if caps is not None:
            if n_prompts is not None and len(caps) != n_prompts:
                raise ValueError(f"max_tokens_per_prompt has {len(caps)} entries for {n_prompts} prompts")
            if any(int(c) < 1 for c in caps):
                raise ValueError(f"every max_tokens_per_prompt entry must be >= 1, got {min(caps)}")

    def max_tokens_of(self, i: int) -> int:
        """The token cap of prompt i."""
        if self.max_tokens_per_prompt is None:
            return self.max_tokens
        return min(self.max_tokens, int(self.max_tokens_per_prompt[i]))

    def for_items(self, start: int, stop: int) -> SamplingParams:
        """These params for prompts[start:stop] (data-parallel dispatch splits the per-prompt caps with them)."""
        if self.max_tokens_per_prompt is None:
            return self
        return dataclasses.replace(self, max_tokens_per_prompt=list(self.max_tokens_per_prompt[start:stop]))


@dataclass
class GenOutput:
    token_ids: list[int]  # generated tokens only (no prompt), ending with the stop string's tokens if any
    logprobs: list[float] | None = None
    finish_reason: str = "stop"  # "stop" (EOS or stop string) | "length"
    stop_reason: str | None = None  # the matched stop string; None for EOS / length
    # speculative decoding (vLLM with rollout.speculative): draft tokens proposed for / accepted into this completion
    spec_drafted: int = 0
    spec_accepted: int = 0


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer and the generation manager need from an engine."""

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[GenOutput]:
        """len(prompts) * params.n outputs, prompt-major."""
        ...

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load full (unsharded) weights in HF naming into the engine in place."""
        ...
