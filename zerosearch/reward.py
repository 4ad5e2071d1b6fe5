"""Reward for search-augmented QA: answer extraction, SQuAD normalisation, EM / F1 / substring, format rules.

The policy's response is a sequence of blocks::

    <think>..</think>? (<search>q</search> <information>docs</information> <think>..</think>?)* <answer>a</answer>

`<information>` blocks are written by the framework (the search backend), everything else by the policy. With
`search.action_format=tool_call` a search is `<tool_call>{"name": "search", ...}</tool_call>` instead of
`<search>q</search>` (the documents still come inside `<information>`, in the tool turn); the format rules treat
both blocks as a search.
The training reward is the token F1 (ZeroSearch's choice) or exact match of the extracted answer with the
gold answers, optionally shaped by a format term (see `combine_score`).

Departures from the original ZeroSearch / Search-R1 code, each deliberate:
- Metrics carry their own names. The original called substring containment "EM" and logged that value as F1;
  here `exact_match` is normalised equality, `f1_score` is SQuAD token F1, `substring_match` is containment.
- The answer is extracted from the RESPONSE only, never from prompt+response (the original scored the
  prompt's own example answer when the response had none). Text inside `<information>` blocks is ignored
  too: retrieved documents are not the policy's words, so an `<answer>` tag in a document never scores.
- The last `<answer>` wins: for `<answer>a<answer>b</answer>` that is `b` (innermost before the last close).
- Substring match ignores gold answers that normalise to the empty string (they would match anything).
- Format shaping is two optional knobs, both 0 by default so that the reward is exactly the metric:
  `format_penalty` is subtracted from an answered-but-malformed response (clipped at 0), and
  `format_reward` is Search-R1's structure-format idea written as an affine map for well-formed responses,
  `score = format_reward + (1 - format_reward) * metric`, so a well-formed wrong answer gets
  `format_reward` while a correct one still gets 1 (a partial F1 never scores below a wrong answer).
  A response without `<answer>` always scores 0.
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from verl.utils.config_loader import from_dict

logger = logging.getLogger(__name__)

TAGS = ("think", "search", "information", "answer")
METRICS = ("f1", "em", "substring")
# End-of-sequence markers that may survive decoding; allowed after the final </answer>.
EOS_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<eos>")

SEARCH_BLOCKS = ("search", "tool_call")  # the blocks that are a search (tags / tool-call action formats)
_TAG_RE = re.compile(r"<(/?)(think|search|tool_call|information|answer)>")
_INFO_RE = re.compile(r"<information>.*?(?:</information>|\Z)", re.DOTALL)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


# ----------------------------------------------------------------------------- normalisation and metrics
def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop articles (a, an, the), collapse whitespace."""
    s = str(s).lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES_RE.sub(" ", s)
    return " ".join(s.split())


def _as_gold_list(golds: Any) -> list[str]:
    """Golds as a list of strings: accepts a str, list/tuple/numpy array, or {"target": ...} (parquet schema)."""
    if golds is None:
        return []
    if isinstance(golds, Mapping):
        if "target" not in golds:
            raise ValueError(f"ground truth mapping must have a 'target' key, got keys {sorted(golds)}")
        return _as_gold_list(golds["target"])
    if isinstance(golds, (str, bytes)):
        return [golds.decode() if isinstance(golds, bytes) else golds]
    if hasattr(golds, "tolist"):  # numpy array / scalar
        golds = golds.tolist()
        if isinstance(golds, str):
            return [golds]
    if isinstance(golds, Iterable):
        return [str(g) for g in golds if g is not None]
    return [str(golds)]


def exact_match(pred: str | None, golds: Any) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    if pred is None:
        return 0.0
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in _as_gold_list(golds)))


def substring_match(pred: str | None, golds: Any) -> float:
    """1.0 if any non-empty normalised gold occurs inside the normalised prediction (the original's "EM")."""
    if pred is None:
        return 0.0
    p = normalize_answer(pred)
    for g in _as_gold_list(golds):
        ng = normalize_answer(g)
        if ng and ng in p:
            return 1.0
    return 0.0


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(pred: str | None, golds: Any) -> float:
    """SQuAD token-level F1 between the normalised prediction and each gold; the max over golds."""
    if pred is None:
        return 0.0
    p = normalize_answer(pred).split()
    return max((_token_f1(p, normalize_answer(g).split()) for g in _as_gold_list(golds)), default=0.0)


# ----------------------------------------------------------------------------- extraction and format
def extract_answer(response: str) -> str | None:
    """The last `<answer>...</answer>` of the response (stripped), ignoring `<information>` blocks; None if none.

    Pass the response only, never prompt+response. Never raises on arbitrary text.
    """
    if not isinstance(response, str):
        return None
    text = _INFO_RE.sub(" ", response)
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    if start < 0:
        return None
    return text[start + len("<answer>") : end].strip()


@dataclass
class FormatResult:
    """Outcome of `check_format`: `valid`, a human-readable `reason` ("ok" when valid) and block counts."""

    valid: bool
    reason: str
    n_think: int = 0
    n_search: int = 0
    n_information: int = 0
    n_answer: int = 0
    blocks: tuple[str, ...] = ()


def _strip_trailing_eos(text: str) -> str:
    text = text.rstrip()
    changed = True
    while changed:
        changed = False
        for marker in EOS_MARKERS:
            if text.endswith(marker):
                text = text[: -len(marker)].rstrip()
                changed = True
    return text


def _scan_blocks(response: str, strict: bool) -> tuple[list[str], str | None, int]:
    """Tokenise into top-level blocks. Returns (block names, error or None, end offset of the last block)."""
    blocks: list[str] = []
    open_tag: str | None = None
    cursor = 0  # end of the previous top-level block
    last_end = 0
    for m in _TAG_RE.finditer(response):
        closing, name = m.group(1) == "/", m.group(2)
        if open_tag is None:
            if closing:
                return blocks, f"</{name}> without a matching <{name}>", last_end
            if strict and response[cursor : m.start()].strip():
                return blocks, f"text outside blocks before <{name}> (strict format)", last_end
            open_tag = name
        elif open_tag == "information":
            # Retrieved documents are opaque: only the closing tag matters inside them.
            if closing and name == "information":
                blocks.append(name)
                open_tag, cursor = None, m.end()
                last_end = cursor
        elif closing and name == open_tag:
            blocks.append(name)
            open_tag, cursor = None, m.end()
            last_end = cursor
        else:
            tag = f"</{name}>" if closing else f"<{name}>"
            return blocks, f"{tag} nested inside <{open_tag}>", last_end
    if open_tag is not None:
        return blocks, f"unclosed <{open_tag}>", last_end
    return blocks, None, last_end


def _check_order(blocks: list[str]) -> str | None:
    """Sequence rules over block names; returns an error message or None."""
    for i, name in enumerate(blocks):
        prev = blocks[i - 1] if i else None
        nxt = blocks[i + 1] if i + 1 < len(blocks) else None
        if name in SEARCH_BLOCKS and nxt != "information":
            return f"<{name}> #{blocks[: i + 1].count(name)} not followed by an <information> block"
        if name == "information" and prev not in SEARCH_BLOCKS:
            return "<information> block not preceded by a <search> (or <tool_call>) block"
    n_answer = blocks.count("answer")
    if n_answer == 0:
        return "no <answer> block"
    if n_answer > 1:
        return f"{n_answer} <answer> blocks, expected exactly one"
    if blocks[-1] != "answer":
        return "<answer> is not the final block"
    return None


def check_format(response: str, strict: bool = False) -> FormatResult:
    """Check the block grammar of a response; never raises.

    Valid when: tags are balanced and not nested (the content of `<information>` is opaque), every `<search>`
    (or `<tool_call>`) is immediately followed by an `<information>` block and every `<information>` follows one,
    `<think>` blocks are optional, there is exactly one `<answer>` and it is the final block, with only
    whitespace or end-of-sequence markers after it. With `strict=True` no text may sit outside blocks
    (Search-R1's rule); by default free text between blocks is tolerated (small models write some).
    """
    if not isinstance(response, str):
        return FormatResult(False, f"response must be a str, got {type(response).__name__}")
    blocks, error, last_end = _scan_blocks(response, strict)
    counts = {f"n_{t}": blocks.count(t) for t in TAGS}
    counts["n_search"] += blocks.count("tool_call")
    if error is None:
        error = _check_order(blocks)
    if error is None and _strip_trailing_eos(response[last_end:]):
        error = "text after the final </answer>"
    return FormatResult(error is None, error or "ok", blocks=tuple(blocks), **counts)


# ----------------------------------------------------------------------------- config and scoring
@dataclass
class RewardConfig:
    """Typed reward settings (config section `reward`).

    metric: training reward, "f1" (ZeroSearch), "em" or "substring" (what the original called EM).
    format_penalty: subtracted from answered but malformed responses, in [0, 1]; 0 disables.
    format_reward: score floor of well-formed responses, in [0, 1); score = fr + (1 - fr) * metric; 0 disables.
    strict_format: forbid free text outside blocks in `check_format`.
    """

    metric: str = "f1"
    format_penalty: float = 0.0
    format_reward: float = 0.0
    strict_format: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, section: str = "reward") -> None:
        if self.metric not in METRICS:
            allowed = ", ".join(repr(m) for m in METRICS)
            raise ValueError(f"{section}.metric must be one of {allowed}, got {self.metric!r}")
        for key, upper_open in (("format_penalty", False), ("format_reward", True)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{section}.{key} must be a number, got {value!r}")
            ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
            if not ok:
                bound = "[0, 1)" if upper_open else "[0, 1]"
                raise ValueError(f"{section}.{key} must be in {bound}, got {value!r}; 0 disables it")
            setattr(self, key, float(value))
        if not isinstance(self.strict_format, bool):
            raise ValueError(f"{section}.strict_format must be true or false, got {self.strict_format!r}")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None, section: str = "reward") -> RewardConfig:
        """Build from a mapping (dict / OmegaConf) with the shared loader; errors name `<section>.<key>`."""
        return from_dict(cls, cfg, f"{section}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def combine_score(metric_value: float, has_answer: bool, format_ok: bool, cfg: RewardConfig) -> float:
    """Shape the metric with the format terms (see module docstring); result in [0, 1]."""
    if not has_answer:
        return 0.0
    if format_ok:
        return min(1.0, cfg.format_reward + (1.0 - cfg.format_reward) * metric_value)
    return max(0.0, metric_value - cfg.format_penalty)


def compute_score(
    response: str,
    ground_truth: Any,
    metric: str = "f1",
    format_penalty: float = 0.0,
    format_reward: float = 0.0,
    strict_format: bool = False,
    cfg: RewardConfig | None = None,
    format_text: str | None = None,
) -> dict[str, float]:
    """Score one response against its gold answers.

    Returns {"score", "em", "f1", "substring", "format_ok", "has_answer"} (floats in [0, 1]). `cfg`, when given,
    overrides the keyword settings. A response without `<answer>` scores 0 on every metric. `format_text`, when
    given, is read instead of `response` for the answer and the format check (the rollout's `format_text`: inserted
    spans reduced to their `<information>` blocks, so neither a chat template's role words nor the example
    `<answer>` of a corrective message are taken for the policy's).
    """
    if cfg is None:
        cfg = RewardConfig(metric, format_penalty, format_reward, strict_format)
    text = response if format_text is None else format_text
    pred = extract_answer(text)
    golds = _as_gold_list(ground_truth)
    values = {"em": exact_match(pred, golds), "f1": f1_score(pred, golds), "substring": substring_match(pred, golds)}
    fmt = check_format(text, strict=cfg.strict_format)
    has_answer = pred is not None
    score = combine_score(values[cfg.metric], has_answer, fmt.valid, cfg)
    return {"score": score, **values, "format_ok": float(fmt.valid), "has_answer": float(has_answer)}


def score_batch(
    responses: Sequence[str],
    ground_truths: Sequence[Any],
    data_sources: Sequence[str],
    cfg: RewardConfig | Mapping[str, Any] | None = None,
    format_texts: Sequence[str] | None = None,
) -> tuple[list[float], list[dict[str, float]]]:
    """Reward of a batch for the trainer: (scores, per-sample metric dicts), in input order. `format_texts`: one
    per response, what the format check reads (see `compute_score`)."""
    if not isinstance(cfg, RewardConfig):
        cfg = RewardConfig.from_dict(cfg)
    n = len(responses)
    if len(ground_truths) != n or len(data_sources) != n:
        raise ValueError(
            f"score_batch needs one ground truth and one data source per response: got {n} responses, "
            f"{len(ground_truths)} ground truths, {len(data_sources)} data sources"
        )
    if format_texts is not None and len(format_texts) != n:
        raise ValueError(f"score_batch needs one format text per response: got {n} responses, "
                         f"{len(format_texts)} format texts")
    fmts = [None] * n if format_texts is None else list(format_texts)
    per_sample = [compute_score(r, gt, cfg=cfg, format_text=f) for r, gt, f in zip(responses, ground_truths, fmts)]
    return [m["score"] for m in per_sample], per_sample
