"""Prompts for the simulation LLM and the parser of its output (our own wording, not the original's).

Two families, each with a useful and a noisy variant:

* prompt mode (`simulate_prompt`): a general instruct model is told to act as a search engine, given the
  searcher's question and gold answer(s), and shown one worked example of the exact output layout.
* sft mode (`simulate_sft`): the short form a fine-tuned simulator is trained on. THE FORMAT (the
  simulator fine-tuning code must produce exactly this; use `sft_messages` and `sft_target`):

      user:      "search simulation (useful)\\n"        or "search simulation (noisy)\\n"
                 "query: <query>\\n"
                 "question: <question>\\n"               (line omitted when the question is empty)
                 "answer: <a1> | <a2> | ...\\n"          (useful only; omitted when there are no answers)
                 "documents: <k>"
      assistant: "Doc 1 (Title: <title>) <text>\\nDoc 2 (Title: <title>) <text>\\n..."  (k lines)

  There is no system message. Useful documents help answer the question; noisy ones look relevant to the
  query but do not contain the answer. Departure from the paper's simulator prompt, which gives the gold answer
  for both kinds: the noisy request carries no answer. Measured (BENCHMARKS.md, simulator fine-tuning): a 135M
  simulator fine-tuned with the answer in both prompts copied it into noisy documents as often as into useful
  ones; a simulator that never sees the answer cannot leak it.

Both modes ask for `Doc i (Title: t) text` lines, but `parse_documents` accepts what models actually
write: "Doc 1: ...", "Document 2 -", numbered lists, `[3]`, blank-line paragraphs, markdown headings,
Search-R1's `"Title"\\ntext`, missing titles (derived from the first words), chat tokens and prefaces.
"""

from __future__ import annotations

import re

from zerosearch.search.base import Doc

USEFUL, NOISY = "useful", "noisy"

_SYSTEM = (
    "You play the part of a web search engine. For a search query you return short result documents, "
    "written like encyclopedia or news snippets, in a fixed layout and with nothing else around them."
)
_USEFUL_TASK = (
    "Write {k} result documents for the query. Each document is 30 to 60 words, states facts, and together "
    "they should let the searcher answer the question."
)
_NOISY_TASK = (
    "Write {k} result documents for the query. Each document is 30 to 60 words and looks like a plausible "
    "result for the query, but none of them may contain or hint at the answer: write about related people, "
    "places or events, or give details that do not settle the question."
)
_LAYOUT = (
    "Use exactly this layout, one document per line:\n"
    "Doc 1 (Title: <title>) <text>\nDoc 2 (Title: <title>) <text>"
)
_EXAMPLE_USER = (
    "Query: capital city of Australia\n"
    "The searcher wants to answer: What is the capital of Australia?\n"
    "Correct answer: Canberra\n"
)
_EXAMPLE_USEFUL = (
    "Doc 1 (Title: Canberra) Canberra is the capital city of Australia. It was chosen in 1908 as a "
    "compromise between Sydney and Melbourne and is home to Parliament House and the High Court.\n"
    "Doc 2 (Title: Australian Capital Territory) The Australian Capital Territory was created to hold the "
    "national capital, Canberra, which has hosted the federal parliament since 1927."
)
_EXAMPLE_NOISY = (
    "Doc 1 (Title: Sydney) Sydney is the largest city in Australia, known for its harbour, the Opera House "
    "and beaches such as Bondi. It was founded in 1788 as a British penal colony.\n"
    "Doc 2 (Title: Melbourne) Melbourne, in the state of Victoria, is famous for its laneways, coffee "
    "culture and sporting events, including the Australian Open tennis tournament."
)


def _question_lines(question: str, answers: list[str], *, noisy: bool) -> str:
    lines = []
    if question:
        lines.append(f"The searcher wants to answer: {question}")
    if answers:
        label = "Answer to keep out of the documents" if noisy else "Correct answer"
        lines.append(f"{label}: {' | '.join(answers)}")
    return "".join(line + "\n" for line in lines)


def prompt_messages(query: str, question: str, answers: list[str], kind: str, k: int) -> list[dict[str, str]]:
    """Chat messages of the prompt mode: system rule, a one-shot example, then this request."""
    noisy = kind == NOISY
    task = (_NOISY_TASK if noisy else _USEFUL_TASK).format(k=k)
    example_task = (_NOISY_TASK if noisy else _USEFUL_TASK).format(k=2)
    example_user = _EXAMPLE_USER.replace("Correct answer", "Answer to keep out of the documents") if noisy else (
        _EXAMPLE_USER
    )
    about = _question_lines(question, answers, noisy=noisy)
    return [
        {"role": "system", "content": _SYSTEM},
        {"role": "user", "content": f"{example_user}{example_task}\n{_LAYOUT}"},
        {"role": "assistant", "content": _EXAMPLE_NOISY if noisy else _EXAMPLE_USEFUL},
        {"role": "user", "content": f"Query: {query}\n{about}{task}\n{_LAYOUT}"},
    ]


def sft_prompt(query: str, question: str, answers: list[str], kind: str, k: int) -> str:
    """The user turn of the sft format (see the module docstring)."""
    if kind not in (USEFUL, NOISY):
        raise ValueError(f"kind must be {USEFUL!r} or {NOISY!r}, got {kind!r}")
    lines = [f"search simulation ({kind})", f"query: {query.strip()}"]
    if question.strip():
        lines.append(f"question: {question.strip()}")
    if answers and kind == USEFUL:
        lines.append("answer: " + " | ".join(a.strip() for a in answers))
    lines.append(f"documents: {k}")
    return "\n".join(lines)


def sft_messages(query: str, question: str, answers: list[str], kind: str, k: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": sft_prompt(query, question, answers, kind, k)}]


def sft_target(docs: list[Doc]) -> str:
    """The assistant turn of the sft format: the documents a fine-tuned simulator should write."""
    return "\n".join(f"Doc {i + 1} (Title: {_one_line(d.title)}) {_one_line(d.text)}" for i, d in enumerate(docs))


def _one_line(s: str) -> str:
    return " ".join(s.split())


# ---------------------------------------------------------------------------------------------
# parsing

_CHAT_JUNK = re.compile(r"<\|[^|>]{1,40}\|>|</?s>|```[a-z]*")
_DOC_MARK = re.compile(
    r"^[ \t>*#_]*(?:doc(?:ument)?|passage|result|snippet)\s*#?\s*(\d+)\b[*_]*\s*[:.)\-–—]?", re.I | re.M
)
_NUM_MARK = re.compile(r"^[ \t>*#_]*(?:\[(\d+)\]|(\d+)[.)])[*_]*\s+", re.M)
_TITLE_PAREN = re.compile(r"^[\s:\-]*\(\s*title\s*:\s*([^)\n]*)\)\s*", re.I)
_TITLE_LINE = re.compile(r"^[\s:\-]*\**title\**\s*:\s*(.+?)\s*(?:\n|$)", re.I)
_QUOTED_TITLE = re.compile(r'^\s*"([^"\n]{1,200})"\s*\n')
_BOLD_TITLE = re.compile(r"^\s*(?:\*\*|__)(.+?)(?:\*\*|__)\s*[:\-–—]?\s*")
_HEADING = re.compile(r"^\s*#{1,6}\s*(.+?)\s*\n")
_TEXT_LABEL = re.compile(r"^\s*\**(?:text|content|snippet|body)\**\s*:\s*", re.I)
_PREFACE = re.compile(r"^\s*(?:here (?:are|is)|sure|certainly|of course|below (?:are|is)|okay|ok)\b", re.I)


def _split_blocks(text: str) -> list[str]:
    for mark in (_DOC_MARK, _NUM_MARK):
        starts = [m.start() for m in mark.finditer(text)]
        if starts:
            bounds = starts + [len(text)]
            return [mark.sub("", text[a:b], count=1) for a, b in zip(bounds, bounds[1:])]
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    return [p for p in paragraphs if not (_PREFACE.match(p) and len(p) < 200) and not p.rstrip().endswith(":")]


def _title_and_text(block: str) -> tuple[str, str]:
    for pattern in (_TITLE_PAREN, _TITLE_LINE, _QUOTED_TITLE, _HEADING, _BOLD_TITLE):
        m = pattern.match(block)
        if m and m.group(1).strip():
            return m.group(1), block[m.end():]
    lines = [line for line in block.strip().splitlines() if line.strip()]
    if len(lines) > 1 and len(lines[0].split()) <= 10 and not lines[0].rstrip().endswith((".", "!", "?")):
        return lines[0], "\n".join(lines[1:])
    return "", block


def _clean(s: str) -> str:
    s = re.sub(r"(\*\*|__)", "", s)
    return " ".join(s.split()).strip(" \"'*_-–—:|")


def _title_from_text(text: str, n_words: int = 6) -> str:
    first = re.split(r"(?<=[.!?;,])\s", text, maxsplit=1)[0]
    return " ".join(first.split()[:n_words]).rstrip(".,;:!?")


def parse_documents(text: str, topk: int, max_chars: int = 1000) -> list[Doc]:
    """Robustly turn a simulator completion into at most `topk` documents (possibly none)."""
    text = _CHAT_JUNK.sub("", text or "").replace("\r\n", "\n").strip()
    docs: list[Doc] = []
    seen: set[str] = set()
    for block in _split_blocks(text):
        title, body = _title_and_text(block)
        body = _clean(_TEXT_LABEL.sub("", body.strip()))
        title = _clean(title)
        if len(body) > max_chars:  # cut at a word break in the second half of the budget, else hard
            cut = body[:max_chars]
            space = cut.rfind(" ")
            body = cut[:space] if space >= max_chars // 2 else cut
        if len(body) < 3 or body.lower() in seen:
            continue
        seen.add(body.lower())
        docs.append(Doc(title=title[:200] or _title_from_text(body), text=body))
        if len(docs) >= topk:
            break
    return docs
