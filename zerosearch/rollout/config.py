"""Settings and action parsing of the multi-turn search rollout (`zerosearch.generation`).

`GenerationConfig` holds every knob of the loop (turns, length budgets, observation format, stop strings,
corrective message, final-turn and EOS behaviour); it is validated once, with errors that name the key.
`parse_action` reads the policy's action from the text of one turn.

Actions: the first complete `<search> q </search>` or `<answer> a </answer>` of a turn's text. A search with
an empty query is invalid (the original sent the empty string to the engine). A prompt may pre-open a tag
(an assistant prefix ending in `<search>`, "prefill"); `open_tag_suffix` finds that unclosed tag so the
first turn's action is parsed from prefix + generated text.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

OBSERVATION_FORMATS = ("inline", "chat")
FINAL_TURN_MODES = ("answer", "none")
EOS_MODES = ("finish", "correct")
DEFAULT_INVALID_MESSAGE = (
    "My previous action was invalid. I must search with <search> query </search> "
    "or answer with <answer> answer </answer>."
)

_ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_OPEN_TAG_AT_END = re.compile(r"<(search|answer)>(?:(?!</?(?:search|answer)>).)*\Z", re.DOTALL)


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
    stop: stop strings of a search turn; final_stop: those of the final turn (no `</search>`: the final turn
        cannot search, and a search written there is never executed).
    invalid_action_message: inserted (masked) after a turn with no valid action; the trajectory goes on.
    on_eos_without_action: "finish" (EOS without an action ends the trajectory) or "correct" (the original's:
        the corrective message is inserted and the policy generates again).
    final_turn: "answer" (one last generation, stop only at `</answer>`) or "none" (trajectories still
        active after max_turns end there).
    overlap_chunks: 1 (default): each turn generates all active rows, then searches for all of them. C > 1:
        the batch is split into C chunks that take turns on the engine while the previous chunks' searches run
        in a background thread (overlap of search with generation; see zerosearch/generation.py).
    """

    max_turns: int = 2
    max_prompt_length: int = 512
    max_response_length: int = 256
    max_obs_length: int = 256
    topk: int = 3
    observation_format: str = "inline"
    observation_role: str = "user"
    stop: list[str] = field(default_factory=lambda: ["</search>", "</answer>"])
    final_stop: list[str] = field(default_factory=lambda: ["</answer>"])
    invalid_action_message: str = DEFAULT_INVALID_MESSAGE
    on_eos_without_action: str = "finish"
    final_turn: str = "answer"
    truncate_prompt: bool = False
    overlap_chunks: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, section: str = "search") -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"{section}.{key} {msg}")

        for key in ("max_turns", "max_prompt_length", "max_response_length", "max_obs_length", "topk",
                    "overlap_chunks"):
            value = getattr(self, key)
            low = 0 if key == "max_turns" else 1
            need(isinstance(value, int) and not isinstance(value, bool) and value >= low, key,
                 f"must be an integer >= {low}, got {value!r}")
        need(self.observation_format in OBSERVATION_FORMATS, "observation_format",
             f"must be one of {OBSERVATION_FORMATS}, got {self.observation_format!r}")
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
        need("</answer>" in self.final_stop, "final_stop", "must contain '</answer>'")
        need("</search>" not in self.final_stop, "final_stop",
             "must not contain '</search>': the final turn cannot search")
        need(self.max_turns == 0 or "</search>" in self.stop, "stop",
             "must contain '</search>' (otherwise generation runs past the query)")
        need(isinstance(self.truncate_prompt, bool), "truncate_prompt", "must be true or false")
        need(self.max_turns > 0 or self.final_turn == "answer", "final_turn",
             "=none with max_turns=0 would generate nothing; raise search.max_turns or use final_turn=answer")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None, section: str = "search") -> GenerationConfig:
        """Build from a mapping; unknown keys are rejected with the list of known ones."""
        data = dict(cfg or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; known: {known}")
        obj = cls.__new__(cls)
        for f in dataclasses.fields(cls):
            if f.name in data:
                value = data[f.name]
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = f.default
            setattr(obj, f.name, value)
        obj.validate(section)
        return obj


def parse_action(text: str, prefer_answer: bool = False) -> tuple[str | None, str]:
    """(kind, content) of the first complete action in `text`: kind "search" / "answer", or (None, "").

    prefer_answer (the final turn): an `<answer>` anywhere wins over an earlier `<search>`, which could not be
    executed anyway.
    """
    if prefer_answer:
        m = _ANSWER.search(text)
        if m is not None:
            return "answer", m.group(1).strip()
    m = _ACTION.search(text)
    if m is None:
        return None, ""
    kind, content = m.group(1), m.group(2).strip()
    if kind == "search" and not content:
        return None, ""
    return kind, content


def open_tag_suffix(text: str) -> str:
    """The unclosed `<search>` / `<answer>` opening (and what follows it) at the end of `text`, else ""."""
    m = _OPEN_TAG_AT_END.search(text)
    return m.group(0) if m else ""
