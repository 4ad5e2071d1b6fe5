"""Prompts of the search agent: the instruction and the one-shot chat demonstration.

The policy reasons in plain text, searches with `<search> query </search>`, reads the results the
framework returns inside `<information> ... </information>` (rendered as `Doc i(Title: t) text`, see
`zerosearch.search.base.format_docs`), may search again, and ends with a short answer inside
`<answer> ... </answer>`. The wording is this project's own.

Three styles:
- "zeroshot": one user message, `INSTRUCTION` + the question. This is how ZeroSearch / Search-R1 prompt
  7B-class models on real datasets, and what `prepare.py` uses by default.
- "tool_call" (for `search.action_format=tool_call`): one user message, `TOOL_INSTRUCTION` + the question; the
  policy searches by calling the `search` tool, `<tool_call>{"name": "search", "arguments": {"query": q}}
  </tool_call>`, and still answers in `<answer> </answer>`. Rows of this style carry the tool's schema
  (`prompt_tools`, a JSON string in the dataset's `tools` column), which the dataset passes to the chat
  template's `tools=`. The instruction spells the call out too, for templates that ignore `tools=` (SmolLM2's).
- "oneshot": a system message with the rule, a worked demonstration (user question -> assistant turn that
  searches, receives information and answers), then the real question. The embedded 135M model needs it:
  zero-shot it wrote `<search>` in 0/32 samples, with a one-shot chat demonstration in 11/32.
  The demo entity (Quorin Zaxley, born in Jexmoor) uses letters the world's name generator never emits,
  so it can never be an entity of the embedded world. The whole one-shot prompt stays well under 300
  tokens of a llama-style tokenizer.

Departure from the originals: no `<think>` tags are demanded (the reward accepts them but the tiny model
spends its few tokens better on the tags that matter); the example answer in the instruction is a made-up
name rather than a real answer (the reward reads the response only, so it can never score anyway).
"""

from __future__ import annotations

import json

STYLES = ("oneshot", "zeroshot", "tool_call")

INSTRUCTION = (
    "Answer the question below with the help of a search engine. Think it through step by step. Whenever "
    "you lack a fact, write a search query between <search> and </search>; the results will be shown to you "
    "between <information> and </information>. Search as many times as you need. When you are sure, give "
    "only the short final answer between <answer> and </answer>, for example <answer> Nils Ortega </answer>."
)

TOOL_INSTRUCTION = (
    "Answer the question below with the help of the search tool. Think it through step by step. Whenever you "
    'lack a fact, call the tool: <tool_call>{"name": "search", "arguments": {"query": "your query"}}</tool_call>; '
    "the results will come back to you between <information> and </information>. Search as many times as you "
    "need. When you are sure, give only the short final answer between <answer> and </answer>, for example "
    "<answer> Nils Ortega </answer>."
)

SYSTEM_RULE = (
    "You answer questions using a search engine. To search, write <search> query </search>. Results come "
    "back in <information> ... </information>. Search again if needed. End with a short answer in "
    "<answer> ... </answer>."
)

DEMO_NAMES = ("Quorin Zaxley", "Zaxley", "Jexmoor")
DEMO_QUESTION = "Where was Quorin Zaxley born?"
DEMO_RESPONSE = (
    "I need to find the birthplace of Quorin Zaxley.\n"
    "<search> Quorin Zaxley born </search>\n"
    "<information>Doc 1(Title: Quorin Zaxley) Quorin Zaxley (born 1794 in Jexmoor) is a glassmaker."
    "</information>\n"
    "The document says he was born in Jexmoor.\n"
    "<answer> Jexmoor </answer>"
)


def question_text(question: str) -> str:
    """The question as written in a user turn: stripped, ending with a question mark."""
    q = question.strip()
    if not q:
        raise ValueError("question is empty")
    return q if q.endswith(("?", ".")) else q + "?"


def build_prompt(question: str, style: str = "oneshot") -> list[dict[str, str]]:
    """Chat messages ({"role", "content"}) asking `question` in the given style (one of `STYLES`)."""
    q = question_text(question)
    if style == "zeroshot":
        return [{"role": "user", "content": f"{INSTRUCTION}\nQuestion: {q}"}]
    if style == "tool_call":
        return [{"role": "user", "content": f"{TOOL_INSTRUCTION}\nQuestion: {q}"}]
    if style == "oneshot":
        return [
            {"role": "system", "content": SYSTEM_RULE},
            {"role": "user", "content": f"Question: {DEMO_QUESTION}"},
            {"role": "assistant", "content": DEMO_RESPONSE},
            {"role": "user", "content": f"Question: {q}"},
        ]
    raise ValueError(f"prompt style must be one of {STYLES}, got {style!r}")


def prompt_tools(style: str) -> str | None:
    """The tool schemas a prompt of `style` is rendered with (the `tools` column: a JSON list), None if none."""
    if style not in STYLES:
        raise ValueError(f"prompt style must be one of {STYLES}, got {style!r}")
    if style != "tool_call":
        return None
    from zerosearch.rollout.actions import SEARCH_TOOL  # here: the rollout package imports torch, prompts need not

    return json.dumps([SEARCH_TOOL])
