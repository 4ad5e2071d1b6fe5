"""Evaluation results: per-dataset figures from trajectory records, the paper's table, and side-by-side runs.

Everything here is computed from the trajectory records (`trajectories.jsonl`, one per question and sample), so a
resumed evaluation, whose records come from several sessions, gives the same table as an uninterrupted one.

- Per data source: EM, F1 and substring accuracy (means over every sample: with N samples each this is mean@N),
  pass@k on EM (the unbiased estimator of Chen et al. 2021, 1 - C(N-c, k) / C(N, k) per question, c = correct
  samples), answer rate, format validity, searches and turns per question, policy tokens, stop reasons.
- `avg`: the mean over data sources of each figure (the paper's "Avg": every dataset counts once, whatever its
  size); `overall`: the mean over all questions (what the trainer logged as `val/overall` before it had both).
- The table follows the paper's layout: single-hop NQ, TriviaQA, PopQA, then multi-hop HotpotQA, 2Wiki, Musique,
  Bamboogle, then Avg; sources absent from the data are left out, unknown ones appended in name order.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

SINGLE_HOP = (("nq", "NQ"), ("triviaqa", "TriviaQA"), ("popqa", "PopQA"))
MULTI_HOP = (("hotpotqa", "HotpotQA"), ("2wikimultihopqa", "2Wiki"), ("musique", "Musique"),
             ("bamboogle", "Bamboogle"))
PAPER_NAMES = dict(SINGLE_HOP + MULTI_HOP)
SCORES = ("em", "f1", "substring")
PER_QUESTION = ("has_answer", "format_ok", "num_searches", "num_turns", "response_tokens")
STOP_REASONS = ("answer", "eos", "length", "no_answer", "max_turns")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def ks_for(n: int) -> list[int]:
    """The k of pass@k reported for N samples: 1, 2, 4, ... below N, and N."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def source_order(sources: Iterable[str]) -> list[str]:
    """The paper's datasets in its order, then the others by name."""
    present = set(sources)
    known = [s for s, _ in SINGLE_HOP + MULTI_HOP if s in present]
    return known + sorted(present - set(known))


def display_name(source: str) -> str:
    return PAPER_NAMES.get(source, source)


def _group(records: Sequence[dict]) -> dict[str, dict[int, list[dict]]]:
    """data_source -> row -> its samples."""
    out: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        out[str(r["data_source"])][int(r["row"])].append(r)
    return out


def source_figures(rows: dict[int, list[dict]], n: int) -> dict[str, float]:
    """The figures of one data source from its questions' samples."""
    samples = [s for group in rows.values() for s in group]
    fig: dict[str, float] = {"questions": float(len(rows)), "samples": float(len(samples))}
    for k in SCORES + PER_QUESTION:
        fig[k] = float(np.mean([float(s[k]) for s in samples])) if samples else 0.0
    if n > 1:
        for k in ks_for(n):
            fig[f"pass@{k}"] = float(np.mean([pass_at_k(len(g), sum(float(s["em"]) == 1.0 for s in g), k)
                                              for g in rows.values() if len(g) >= k]))
    reasons = Counter(str(s["stop_reason"]) for s in samples)
    for reason in sorted(set(STOP_REASONS) | set(reasons)):
        fig[f"stop/{reason}"] = reasons.get(reason, 0) / max(len(samples), 1)
    return fig


def summarize(records: Sequence[dict], n: int) -> dict:
    """{"sources": {source: figures}, "order": [...], "avg": figures averaged over sources, "overall": all rows}."""
    grouped = _group(records)
    order = source_order(grouped)
    sources = {s: source_figures(grouped[s], n) for s in order}
    keys = sorted({k for fig in sources.values() for k in fig} - {"questions", "samples"})
    avg = {k: float(np.mean([fig[k] for fig in sources.values() if k in fig])) for k in keys} if sources else {}
    everything = {(s, r): g for s in grouped for r, g in grouped[s].items()}
    overall = source_figures(everything, n) if everything else {}
    if sources:
        avg["datasets"] = float(len(sources))
        avg["questions"] = float(sum(fig["questions"] for fig in sources.values()))
    return {"sources": sources, "order": order, "avg": avg, "overall": overall}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


ROWS = (("EM", "em", _pct), ("F1", "f1", _pct), ("Substring", "substring", _pct), ("answer rate", "has_answer", _pct),
        ("format valid", "format_ok", _pct), ("searches / question", "num_searches", _num),
        ("turns / question", "num_turns", _num), ("policy tokens", "response_tokens", _num))


def _header(order: Sequence[str], first: str) -> list[str]:
    single = {s for s, _ in SINGLE_HOP}
    multi = {s for s, _ in MULTI_HOP}
    names = []
    for s in order:
        tag = " (1-hop)" if s in single else " (multi-hop)" if s in multi else ""
        names.append(display_name(s) + tag)
    return [f"| {first} | " + " | ".join(names) + " | Avg |", "|---" * (len(order) + 2) + "|"]


def format_table(summary: dict, n: int, title: str = "") -> str:
    """Markdown: one column per dataset (the paper's order) and Avg; rows EM, F1, substring (x100), pass@k for N > 1,
    answer rate, searches and turns per question, questions, and stop reasons."""
    order, src, avg = summary["order"], summary["sources"], summary["avg"]
    lines = [f"### {title}", ""] if title else []
    lines += _header(order, "metric")
    rows = list(ROWS)
    if n > 1:
        rows[0] = (f"EM (mean@{n})", "em", _pct)
        rows[1:1] = [(f"pass@{k} (EM)", f"pass@{k}", _pct) for k in ks_for(n)]
    for label, key, fmt in rows:
        cells = [fmt(src[s].get(key)) for s in order] + [fmt(avg.get(key))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| questions | " + " | ".join(str(int(src[s]["questions"])) for s in order) +
                 f" | {int(avg.get('questions', 0))} |")
    for reason in sorted({k[5:] for s in order for k in src[s] if k.startswith("stop/")}):
        if any(src[s].get(f"stop/{reason}", 0) > 0 for s in order):
            cells = [_pct(src[s].get(f"stop/{reason}")) for s in order] + [_pct(avg.get(f"stop/{reason}"))]
            lines.append(f"| stop: {reason} (%) | " + " | ".join(cells) + " |")
    ov = summary.get("overall") or {}
    if ov:
        lines += ["", f"Row mean over all {int(ov['questions'])} questions: EM {_pct(ov['em'])}, F1 {_pct(ov['f1'])}, "
                      f"substring {_pct(ov['substring'])} (Avg above is the mean over datasets)."]
    return "\n".join(lines)


def compare_tables(summaries: Sequence[dict], names: Sequence[str], metrics: Sequence[str] = ("em", "f1")) -> str:
    """Markdown: per metric, one row per run (datasets in the paper's order, Avg), then each run's difference from
    the first in points (x100). Datasets missing from a run show '-'."""
    order = source_order({s for summ in summaries for s in summ["results"]["order"]})
    out = []
    for metric in metrics:
        out += [f"#### {metric.upper()} (x100)", ""] + _header(order, "run")
        values = []
        for summ, name in zip(summaries, names):
            res = summ["results"]
            row = [res["sources"].get(s, {}).get(metric) for s in order] + [res["avg"].get(metric)]
            values.append(row)
            out.append(f"| {name} | " + " | ".join(_pct(x) for x in row) + " |")
        base = values[0]
        for row, name in zip(values[1:], names[1:]):
            diffs = ["-" if a is None or b is None else f"{100 * (b - a):+.1f}" for a, b in zip(base, row)]
            out.append(f"| {name} - {names[0]} | " + " | ".join(diffs) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def setting_differences(summaries: Sequence[dict], names: Sequence[str]) -> list[str]:
    """Settings that differ between runs (so a comparison says what it compares)."""
    keys = ("model", "search_engine", "max_turns", "topk", "n", "temperature", "rollout", "dtype",
            "max_response_length", "data_files")
    lines = []
    for k in keys:
        vals = [summ.get("settings", {}).get(k) for summ in summaries]
        if any(v != vals[0] for v in vals[1:]):
            lines.append(f"{k}: " + ", ".join(f"{name}={v}" for name, v in zip(names, vals)))
    return lines
