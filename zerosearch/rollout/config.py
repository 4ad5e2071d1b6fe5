"""Settings of the multi-turn search rollout (`zerosearch.rollout`).

`GenerationConfig` holds every knob of the loop (turns, length budgets, action and observation format, stop
strings, corrective message, final-turn and EOS behaviour, the asynchronous loop's search concurrency); it is
validated once, with errors that name the key. Which loop plays the trajectories (lockstep or asynchronous) is
the trainer's `actor_rollout_ref.rollout.mode`, not a key of this section.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from verl.trainer.config import DataConfig
from verl.utils.config_loader import from_dict
from zerosearch.rollout.actions import (
    ACTION_FORMATS,
    ANSWER_STOP,
    TAGS_INVALID_MESSAGE,
    ActionFormat,
    action_format,
)
from zerosearch.search.config import SearchConfig

OBSERVATION_FORMATS = ("inline", "chat")
FINAL_TURN_MODES = ("answer", "none")
EOS_MODES = ("finish", "correct")
DEFAULT_INVALID_MESSAGE = TAGS_INVALID_MESSAGE  # the tag format's; each action format has its own


@dataclass
class GenerationConfig:
    """Knobs of the multi-turn search rollout.

    max_turns: search turns (each may end in a search); then one final turn without search (see final_turn).
    max_prompt_length: prompt tokens (longer prompts raise unless truncate_prompt, which keeps the tail).
    max_response_length: total response tokens of a trajectory, all turns and observations included.
    max_obs_length: tokens of one observation (the <information> block, wrapper included); docs are cut to fit.
    topk: documents per search.
    observation_format: "inline" (the original's: `\\n\\n<information>docs</information>\\n\\n` inside the
        assistant text) or "chat" (a new `observation_role` turn rendered with the tokenizer's chat template,
        then the assistant turn reopened). Observation / corrective tokens are masked (response_mask 0).
        None (default): the action format's (tags: inline; tool_call: chat). tool_call with inline is refused:
        a tool's result is a turn of its own.
    observation_role: the role of a chat observation; None (default): the action format's (tags: user;
        tool_call: tool). Set "user" for a template that cannot render a `tool` turn.
    stop: stop strings of a search turn; final_stop: those of the final turn (no `</search>`: the final turn
        cannot search, and a search written there is never executed).
    invalid_action_message: inserted (masked) after a turn with no valid action; the trajectory goes on.
        None (default): the action format's (how to search in that format, or answer).
    on_eos_without_action: "finish" (EOS without an action ends the trajectory) or "correct" (the original's:
        the corrective message is inserted and the policy generates again).
    final_turn: "answer" (one last generation, stop only at `</answer>`) or "none" (trajectories still
        active after max_turns end there).
    action_format: "tags" (the original's `<search> q </search>`) or "tool_call" (the policy calls a `search`
        tool, `<tool_call>{"name": "search", "arguments": {"query": q}}</tool_call>` as Qwen2.5 / Hermes templates
        emit it; the documents come back as a `tool` message; see zerosearch/rollout/actions.py). The answer is
        `<answer> a </answer>` in both.
    max_concurrent_searches: the asynchronous loop's bound on backend calls in flight; searches that arrive while
        all slots are busy are sent together in the next call (one batch), as batch-friendly backends prefer.
    """

    max_turns: int = 2
    # the trainer sets these four from data.* and search.topk; standalone defaults are those sections' own
    max_prompt_length: int = field(default_factory=lambda: DataConfig().max_prompt_length)
    max_response_length: int = field(default_factory=lambda: DataConfig().max_response_length)
    max_obs_length: int = field(default_factory=lambda: DataConfig().max_obs_length)
    topk: int = field(default_factory=lambda: SearchConfig.__dataclass_fields__["topk"].default)
    observation_format: str | None = None  # None: the action format's
    observation_role: str | None = None  # None: the action format's
    stop: list[str] | None = None  # None: the action format's search stop and </answer>
    final_stop: list[str] = field(default_factory=lambda: [ANSWER_STOP])
    invalid_action_message: str | None = None  # None: the action format's
    on_eos_without_action: str = "finish"
    final_turn: str = "answer"
    truncate_prompt: bool = False
    action_format: str = "tags"
    max_concurrent_searches: int = 32

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, section: str = "search") -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"{section}.{key} {msg}")

        for key in ("max_turns", "max_prompt_length", "max_response_length", "max_obs_length", "topk",
                    "max_concurrent_searches"):
            value = getattr(self, key)
            low = 0 if key == "max_turns" else 1
            need(isinstance(value, int) and not isinstance(value, bool) and value >= low, key,
                 f"must be an integer >= {low}, got {value!r}")
        need(self.action_format in ACTION_FORMATS, "action_format",
             f"must be one of {sorted(ACTION_FORMATS)}, got {self.action_format!r}")
        actions = self.actions
        search_stop = actions.search_stop
        if self.stop is None:
            self.stop = [search_stop, ANSWER_STOP]
        if self.observation_format is None:
            self.observation_format = actions.observation_format
        if self.observation_role is None:
            self.observation_role = actions.observation_role
        if self.invalid_action_message is None:
            self.invalid_action_message = actions.invalid_message
        need(self.observation_format in OBSERVATION_FORMATS, "observation_format",
             f"must be one of {OBSERVATION_FORMATS}, got {self.observation_format!r}")
        need(self.observation_format == "chat" or actions.observation_format != "chat", "observation_format",
             f"must be chat (or unset) with search.action_format={self.action_format}, whose documents come "
             f"back as a turn of their own; got {self.observation_format!r}")
        need(self.final_turn in FINAL_TURN_MODES, "final_turn",
             f"must be one of {FINAL_TURN_MODES}, got {self.final_turn!r}")
        need(self.on_eos_without_action in EOS_MODES, "on_eos_without_action",
             f"must be one of {EOS_MODES}, got {self.on_eos_without_action!r}")
        need(isinstance(self.observation_role, str) and bool(self.observation_role), "observation_role",
             "must be a chat role name such as 'user' or 'tool'")
        need(isinstance(self.invalid_action_message, str), "invalid_action_message", "must be a string")
        for key in ("stop", "final_stop"):
            value = getattr(self, key)
            need(isinstance(value, (list, tuple)) and all(isinstance(s, str) and s for s in value), key,
                 f"must be a list of non-empty strings, got {value!r}")
            setattr(self, key, list(value))
        need(ANSWER_STOP in self.final_stop, "final_stop", f"must contain {ANSWER_STOP!r}")
        need(search_stop not in self.final_stop, "final_stop",
             f"must not contain {search_stop!r}: the final turn cannot search")
        need(self.max_turns == 0 or search_stop in self.stop, "stop",
             f"must contain {search_stop!r} (otherwise generation runs past the query)")
        need(isinstance(self.truncate_prompt, bool), "truncate_prompt", "must be true or false")
        need(self.max_turns > 0 or self.final_turn == "answer", "final_turn",
             "=none with max_turns=0 would generate nothing; raise search.max_turns or use final_turn=answer")

    @property
    def actions(self) -> ActionFormat:
        """The action format (`search.action_format`): how a search is written and parsed."""
        return action_format(self.action_format)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None, section: str = "search") -> GenerationConfig:
        """Build from a mapping with the shared loader; errors name `<section>.<key>` and list the known keys."""
        return from_dict(cls, cfg, f"{section}.")
