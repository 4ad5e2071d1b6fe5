"""The policy's actions in the text of one turn: a search (as `<search>` tags or a `search` tool call) or an answer.

Two action formats, registered by name (`search.action_format`):
- "tags" (ZeroSearch / Search-R1): `<search> q </search>`; the engine stops at `</search>`.
- "tool_call" (Qwen2.5 / Hermes chat templates): `<tool_call>{"name": "search", "arguments": {"query": q}}
  </tool_call>`; the engine stops at `</tool_call>`. A call of another tool, JSON that does not parse, or an
  empty query is an invalid action (the corrective message follows). The tool's schema (`SEARCH_TOOL`) goes
  into the prompt through the chat template's `tools=`.
In both, the answer is `<answer> a </answer>`, and the first complete action of a turn is the one acted on.
Each format also names how its documents come back (the defaults of `search.observation_format` /
`observation_role`, set here and nowhere else) and its corrective message: tags -> inline
`<information>` in the assistant's text; tool_call -> a `tool` turn of the chat template whose content is
`<information>docs</information>` (so the reward reads both formats alike).

A search with an empty query is invalid (the original sent the empty string to the engine). A prompt may pre-open
a tag (an assistant prefix ending in `<search>`, "prefill"); `open_suffix` finds that unclosed tag so the first
turn's action is parsed from prefix + generated text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

ANSWER_STOP = "</answer>"
TAGS_INVALID_MESSAGE = (
    "My previous action was invalid. I must search with <search> query </search> "
    "or answer with <answer> answer </answer>."
)
TOOL_CALL_INVALID_MESSAGE = (  # the content of a tool turn: the tool's reply to a call it cannot run
    'The previous action was invalid. To search, call the search tool: <tool_call>{"name": "search", '
    '"arguments": {"query": "..."}}</tool_call>; to answer, write <answer> answer </answer>.'
)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web and return the top documents for a query.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "what to search for"}},
            "required": ["query"],
        },
    },
}


@dataclass(frozen=True)
class ActionFormat:
    """How a search is written: its opening and closing strings, and how its query is read from between them."""

    name: str
    search_open: str
    search_stop: str  # the engine stops a search turn here
    observation_format: str = "inline"  # how documents come back by default (search.observation_format)
    observation_role: str = "user"  # the chat turn's role when observation_format=chat (search.observation_role)
    invalid_message: str = TAGS_INVALID_MESSAGE  # default of search.invalid_action_message

    def _action(self) -> re.Pattern:
        o, c = re.escape(self.search_open), re.escape(self.search_stop)
        return re.compile(rf"{o}(.*?){c}|<answer>(.*?)</answer>", re.DOTALL)

    def query(self, body: str) -> str | None:
        """The query inside one search (None: invalid)."""
        query = body.strip()
        return query or None

    def parse(self, text: str, prefer_answer: bool = False) -> tuple[str | None, str]:
        """(kind, content) of the first complete action in `text`: kind "search" / "answer", or (None, "").

        prefer_answer (the final turn): an `<answer>` anywhere wins over an earlier search, which could not be
        executed anyway.
        """
        if prefer_answer:
            m = _ANSWER.search(text)
            if m is not None:
                return "answer", m.group(1).strip()
        m = self._action().search(text)
        if m is None:
            return None, ""
        if m.group(2) is not None:
            return "answer", m.group(2).strip()
        query = self.query(m.group(1))
        return ("search", query) if query is not None else (None, "")

    def open_suffix(self, text: str) -> str:
        """The unclosed search / `<answer>` opening (and what follows it) at the end of `text`, else ""."""
        tags = "|".join(re.escape(t) for t in (self.search_open, self.search_stop, "<answer>", ANSWER_STOP))
        opening = f"(?:{re.escape(self.search_open)}|<answer>)"
        m = re.search(rf"{opening}(?:(?!{tags}).)*\Z", text, re.DOTALL)
        return m.group(0) if m else ""


class ToolCallFormat(ActionFormat):
    """`<tool_call>{"name": "search", "arguments": {"query": ...}}</tool_call>`."""

    def query(self, body: str) -> str | None:
        try:
            call = json.loads(body.strip())
        except ValueError:
            return None
        if not isinstance(call, dict) or call.get("name") != "search":
            return None
        args = call.get("arguments")
        if isinstance(args, str):  # some templates emit the arguments JSON-encoded once more
            try:
                args = json.loads(args)
            except ValueError:
                return None
        query = args.get("query") if isinstance(args, dict) else None
        return (query.strip() or None) if isinstance(query, str) else None


ACTION_FORMATS: dict[str, ActionFormat] = {
    "tags": ActionFormat("tags", "<search>", "</search>"),
    "tool_call": ToolCallFormat("tool_call", "<tool_call>", "</tool_call>", observation_format="chat",
                                observation_role="tool", invalid_message=TOOL_CALL_INVALID_MESSAGE),
}


def action_format(name: str) -> ActionFormat:
    if name not in ACTION_FORMATS:
        raise ValueError(f"search.action_format must be one of {sorted(ACTION_FORMATS)}, got {name!r}")
    return ACTION_FORMATS[name]


def parse_action(text: str, prefer_answer: bool = False) -> tuple[str | None, str]:
    """The tag format's `ActionFormat.parse` (the original's `<search>` / `<answer>` tags)."""
    return ACTION_FORMATS["tags"].parse(text, prefer_answer)


def open_tag_suffix(text: str) -> str:
    """The tag format's `ActionFormat.open_suffix`."""
    return ACTION_FORMATS["tags"].open_suffix(text)
