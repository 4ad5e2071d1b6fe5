"""Prepare the real QA datasets (FlashRAG collection) as train/test parquet files in the project schema.

    python -m zerosearch.data.prepare --out data/zerosearch                  # from the hub (needs network)
    python -m zerosearch.data.prepare --out data/zs --local-dir DIR          # DIR/<name>/<split>.jsonl
    python -m zerosearch.data.prepare --out data/zs --from-zerosearch ZeroSearch_dataset   # check + copy

Train set: NQ + HotpotQA (train splits); test set: NQ, TriviaQA, PopQA, HotpotQA, 2WikiMultiHopQA, Musique,
Bamboogle (each its "test" split, or "dev" where the collection has no test split), as in ZeroSearch.
FlashRAG rows carry `id`, `question` and `golden_answers`; every output row gets `id` = "<source>_<row>"
(row = position in the source split), `data_source` = the source name, and `extra_info.index` unique over
the output file (0..n-1), so GRPO groups never collide across sources (a defect of the original, which
reused per-source indices). `--test-per-source N` subsamples each test source with a seeded rng, except
Bamboogle, kept whole (125 questions). Prompts use the zero-shot `INSTRUCTION` (`--style oneshot` for the
demonstration prompt of small models; `--style tool_call` for `search.action_format=tool_call`, whose rows also
carry the search tool's schema in a `tools` column for the chat template).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zerosearch.data.prompts import STYLES, build_prompt, prompt_tools
from zerosearch.data.schema import check_parquet, make_row, write_parquet

logger = logging.getLogger(__name__)

HUB_REPO = "RUC-NLPIR/FlashRAG_datasets"
SOURCES = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
TRAIN_SOURCES = ("nq", "hotpotqa")
TEST_SOURCES = SOURCES
SPLIT_PREFERENCE = {"train": ("train",), "test": ("test", "dev")}
KEEP_WHOLE = frozenset({"bamboogle"})


class DataSourceError(RuntimeError):
    """A source dataset cannot be loaded (offline hub, missing local file, malformed row)."""


class Records(list):
    """Rows of a JSONL file; `lines[i]` is row i's line number (blank lines are skipped)."""

    def __init__(self, rows: list[dict[str, Any]], lines: list[int]) -> None:
        super().__init__(rows)
        self.lines = lines


def _read_jsonl(path: Path) -> Records:
    """One JSON object per non-blank line; DataSourceError naming the file and line of a bad one."""
    rows, lines = [], []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataSourceError(f"{path}:{lineno}: not UTF-8 ({exc.reason} at byte {exc.start}); re-encode the "
                                      "file as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataSourceError(f"{path}:{lineno}: not valid JSON ({exc})") from None
            if not isinstance(record, dict):
                raise DataSourceError(f"{path}:{lineno}: expected a JSON object with 'question' and 'golden_answers', "
                                      f"got a JSON {type(record).__name__}")
            rows.append(record)
            lines.append(lineno)
    return Records(rows, lines)


def load_local(name: str, kind: str, local_dir: str | Path) -> tuple[list[dict[str, Any]], str, str]:
    """Rows of DIR/<name>/<split>.jsonl for the first existing split of `kind`; (rows, split, origin)."""
    tried = []
    for split in SPLIT_PREFERENCE[kind]:
        path = Path(local_dir) / name / f"{split}.jsonl"
        tried.append(str(path))
        if path.is_file():
            return _read_jsonl(path), split, str(path)
    raise DataSourceError(f"no local file for {name} ({kind}); tried {tried}. Put FlashRAG JSONL files there or "
                          f"drop {name} from --{kind}-sources")


def load_hub(name: str, kind: str) -> tuple[list[dict[str, Any]], str, str]:
    """Rows of the FlashRAG collection on the Hugging Face hub; a clear DataSourceError when it is unreachable."""
    try:
        import datasets
    except ImportError as exc:
        raise DataSourceError("loading from the hub needs the `datasets` package (pip install datasets), or use "
                              "--local-dir / --from-zerosearch") from exc
    last_error: Exception | None = None
    for split in SPLIT_PREFERENCE[kind]:
        try:
            ds = datasets.load_dataset(HUB_REPO, name, split=split)
        except ValueError as exc:
            if "split" in str(exc).lower() and "unknown" in str(exc).lower():
                last_error = exc
                continue  # this source has no such split: try the next one
            raise _hub_error(name, split, exc) from exc
        except Exception as exc:  # noqa: BLE001 - network, offline mode, auth: all mean "hub unusable"
            raise _hub_error(name, split, exc) from exc
        return [dict(r) for r in ds], split, f"hub:{HUB_REPO}/{name}/{split}"
    raise DataSourceError(f"{HUB_REPO}/{name} has none of the splits {SPLIT_PREFERENCE[kind]} ({last_error})")


def _hub_error(name: str, split: str, exc: Exception) -> DataSourceError:
    return DataSourceError(
        f"cannot load {HUB_REPO} config {name!r} split {split!r} from the Hugging Face hub "
        f"({type(exc).__name__}: {str(exc)[:300]}). Without network use --local-dir DIR (FlashRAG JSONL files as "
        f"DIR/{name}/{split}.jsonl) or --from-zerosearch DIR (an existing ZeroSearch_dataset)")


def normalise_record(record: dict[str, Any], origin: str, row: int, where: str | None = None) -> tuple[str, list[str]]:
    """(question, golden answers) of a FlashRAG row; DataSourceError naming the row (`where`, e.g. file:line; default
    "<origin> row <row>") and key when malformed. A null or non-text gold answer is refused, not turned into the
    string "None": the reward would match it."""
    where = where or f"{origin} row {row}"
    if not isinstance(record, dict):
        raise DataSourceError(f"{where}: expected a JSON object, got {type(record).__name__}")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataSourceError(f"{where}: key 'question' must be a non-empty string, got {question!r}")
    answers = record.get("golden_answers")
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, (list, tuple)) or not answers:
        raise DataSourceError(f"{where}: key 'golden_answers' must be a non-empty list, got {answers!r}")
    for i, a in enumerate(answers):
        if isinstance(a, bool) or not isinstance(a, (str, int, float)):
            got = "null" if a is None else repr(a)
            raise DataSourceError(f"{where}: golden_answers[{i}] must be a string, got {got}; fix or remove that "
                                  "answer (or the row)")
    answers = [str(a).strip() for a in answers if str(a).strip()]
    return question.strip(), list(dict.fromkeys(answers))


def subsample(n_rows: int, k: int | None, name: str, seed: int) -> list[int]:
    """Sorted row positions to keep: all if k is None, k >= n_rows or the source is kept whole."""
    if k is None or k >= n_rows or name in KEEP_WHOLE:
        return list(range(n_rows))
    if k <= 0:
        raise ValueError(f"per-source sample size must be positive, got {k}")
    return sorted(random.Random(f"{seed}-{name}").sample(range(n_rows), k))


def build_split(kind: str, sources: Sequence[str], per_source: int | None, seed: int, style: str,
                local_dir: str | Path | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Schema rows of one output file (train or test) and a per-source summary."""
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    tools = prompt_tools(style)
    for name in sources:
        records, split, origin = load_local(name, kind, local_dir) if local_dir else load_hub(name, kind)
        keep = subsample(len(records), per_source, name, seed)
        skipped = 0
        lines = getattr(records, "lines", None)
        for pos in keep:
            where = f"{origin}:{lines[pos]}" if lines is not None else None
            question, answers = normalise_record(records[pos], origin, pos, where)
            if not answers:
                skipped += 1
                continue
            rows.append(make_row(f"{name}_{pos}", question, answers, name, build_prompt(question, style), kind,
                                 len(rows), source_split=split, source_id=str(records[pos].get("id", pos))))
            if tools is not None:
                rows[-1]["tools"] = tools
        if skipped:
            logger.warning("%s: skipped %d rows with only empty golden answers", origin, skipped)
        summary[name] = {"origin": origin, "rows_in_source": len(records), "rows": len(keep) - skipped}
        logger.info("%s %s: %d of %d rows from %s", kind, name, len(keep) - skipped, len(records), origin)
    return rows, summary


def prepare(out_dir: str | Path, train_sources: Sequence[str] = TRAIN_SOURCES,
            test_sources: Sequence[str] = TEST_SOURCES, local_dir: str | Path | None = None,
            train_per_source: int | None = None, test_per_source: int | None = None, seed: int = 0,
            style: str = "zeroshot") -> dict[str, Any]:
    """Write OUT/train.parquet and OUT/test.parquet (each skipped when its source list is empty) and meta.json. All
    or nothing: every source is read and checked, and each file written under a temporary name, before any output
    replaces what OUT held."""
    if style not in STYLES:
        raise ValueError(f"--style must be one of {STYLES}, got {style!r}")
    for flag, names in (("--train-sources", train_sources), ("--test-sources", test_sources)):
        unknown = [n for n in names if n not in SOURCES]
        if unknown:
            raise ValueError(f"{flag}: unknown source(s) {unknown}; known: {list(SOURCES)}")
    if not train_sources and not test_sources:
        raise ValueError("nothing to do: both --train-sources and --test-sources are empty")
    out = Path(out_dir)
    meta: dict[str, Any] = {"seed": seed, "style": style, "splits": {}}
    built = {}
    for kind, sources, per_source in (("train", train_sources, train_per_source),
                                      ("test", test_sources, test_per_source)):
        if not sources:
            continue
        rows, summary = build_split(kind, sources, per_source, seed, style, local_dir)
        built[kind] = rows
        meta["splits"][kind] = {"rows": len(rows), "sources": summary}
    made = not out.exists()
    staged: dict[Path, Path] = {}
    try:
        for kind, rows in built.items():
            final = out / f"{kind}.parquet"
            staged[final] = write_parquet(rows, out / f".{kind}.parquet.tmp", name=str(final))
        final = out / "meta.json"
        staged[final] = out / ".meta.json.tmp"
        staged[final].write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    except BaseException:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    for final, tmp in staged.items():
        os.replace(tmp, final)
    return meta


def from_zerosearch(src_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Accept an existing ZeroSearch_dataset (train/test parquet) after the schema check; copy into out_dir."""
    src = Path(src_dir)
    meta: dict[str, Any] = {"from_zerosearch": str(src), "splits": {}}
    paths = []
    for kind in ("train", "test"):  # both checked before either is copied
        path = src / f"{kind}.parquet"
        if not path.is_file():
            raise DataSourceError(f"--from-zerosearch {src}: {path.name} is missing (expected train.parquet and "
                                  "test.parquet)")
        df = check_parquet(path)
        meta["splits"][kind] = {"rows": len(df), "sources": df["data_source"].value_counts().sort_index().to_dict()}
        paths.append(path)
    if out_dir is not None and Path(out_dir).resolve() != src.resolve():
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for path in paths:
            tmp = Path(out_dir) / f".{path.name}.tmp"
            shutil.copyfile(path, tmp)
            os.replace(tmp, Path(out_dir) / path.name)
    return meta


def _names(text: str) -> list[str]:
    return [] if text.strip().lower() in ("", "none") else [n.strip() for n in text.split(",") if n.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prepare NQ/TriviaQA/PopQA/HotpotQA/2Wiki/Musique/Bamboogle "
                                     "parquet files in the ZeroSearch schema.")
    parser.add_argument("--out", required=True, help="output directory (train.parquet, test.parquet, meta.json)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--local-dir", help="read DIR/<name>/<split>.jsonl instead of the hub")
    src.add_argument("--from-zerosearch", help="an existing ZeroSearch_dataset directory: check and copy")
    parser.add_argument("--train-sources", default=",".join(TRAIN_SOURCES), help="comma list, or 'none'")
    parser.add_argument("--test-sources", default=",".join(TEST_SOURCES), help="comma list, or 'none'")
    parser.add_argument("--train-per-source", type=int, default=None, help="subsample each train source")
    parser.add_argument("--test-per-source", type=int, default=None,
                        help="subsample each test source (Bamboogle is always kept whole), e.g. 500")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", choices=STYLES, default="zeroshot")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.from_zerosearch:
            meta = from_zerosearch(args.from_zerosearch, args.out)
        else:
            meta = prepare(args.out, _names(args.train_sources), _names(args.test_sources), args.local_dir,
                           args.train_per_source, args.test_per_source, args.seed, args.style)
    except (ValueError, DataSourceError, OSError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
