"""Real-dataset preparation from local FlashRAG-shaped JSONL fixtures, the ZeroSearch pass-through, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from zerosearch.data.prepare import DataSourceError, from_zerosearch, prepare
from zerosearch.data.prompts import INSTRUCTION
from zerosearch.data.schema import SchemaError, check_parquet

REPO = Path(__file__).resolve().parents[3]
# name -> {split: rows}; hotpotqa / 2wiki / musique have no test split in FlashRAG (dev is used).
LAYOUT = {"nq": {"train": 30, "test": 40}, "hotpotqa": {"train": 25, "dev": 40}, "triviaqa": {"test": 40},
          "popqa": {"test": 40}, "2wikimultihopqa": {"dev": 40}, "musique": {"dev": 40}, "bamboogle": {"test": 125}}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flashrag")
    for name, splits in LAYOUT.items():
        for split, n in splits.items():
            rows = [{"id": f"{split}_{i}", "question": f"{name} {split} question number {i}",
                     "golden_answers": [f"answer {i}", f"alias {i}"], "metadata": {"x": i}} for i in range(n)]
            write_jsonl(root / name / f"{split}.jsonl", rows)
    return root


def test_prepare_subsamples_keeps_bamboogle_whole_and_numbers_uniquely(local_dir, tmp_path):
    meta = prepare(tmp_path, local_dir=local_dir, test_per_source=10, seed=0)
    train, test = check_parquet(tmp_path / "train.parquet"), check_parquet(tmp_path / "test.parquet")
    assert len(train) == 30 + 25 and set(train.data_source) == {"nq", "hotpotqa"}
    counts = test.data_source.value_counts().to_dict()
    assert counts == {"nq": 10, "hotpotqa": 10, "triviaqa": 10, "popqa": 10, "2wikimultihopqa": 10, "musique": 10,
                      "bamboogle": 125}
    for df in (train, test):
        index = [x["index"] for x in df.extra_info]
        assert index == list(range(len(df)))
        assert df.id.is_unique
    assert meta["splits"]["test"]["sources"]["hotpotqa"]["origin"].endswith("hotpotqa/dev.jsonl")
    hotpot = test[test.data_source == "hotpotqa"]
    assert {x["source_split"] for x in hotpot.extra_info} == {"dev"}
    # The id points back at the source row and the row's content matches it.
    for uid, question in zip(test.id, test.question):
        name, pos = uid.rsplit("_", 1)
        assert question.startswith(f"{name} ") and question.endswith(f"number {pos}")
    row = test.iloc[0]
    assert len(row.prompt) == 1 and row.prompt[0]["content"].startswith(INSTRUCTION)
    assert list(row.golden_answers) == list(row.reward_model["ground_truth"]["target"])
    assert (test.ability == "fact-reasoning").all() and {x["split"] for x in test.extra_info} == {"test"}
    assert json.loads((tmp_path / "meta.json").read_text())["splits"]["test"]["rows"] == 185


def test_subsampling_is_seeded(local_dir, tmp_path):
    ids = []
    for run, seed in ((0, 1), (1, 1), (2, 2)):
        prepare(tmp_path / str(run), train_sources=[], test_sources=["nq"], local_dir=local_dir,
                test_per_source=10, seed=seed)
        ids.append(list(pd.read_parquet(tmp_path / str(run) / "test.parquet").id))
    assert ids[0] == ids[1] and ids[0] != ids[2]


def test_oneshot_style_and_string_answers(tmp_path):
    write_jsonl(tmp_path / "in" / "popqa" / "test.jsonl",
                [{"question": "who is it", "golden_answers": "Someone"},
                 {"question": "who else", "golden_answers": ["", "  "]}])
    prepare(tmp_path / "out", train_sources=[], test_sources=["popqa"], local_dir=tmp_path / "in", style="oneshot")
    df = check_parquet(tmp_path / "out" / "test.parquet")
    assert len(df) == 1 and list(df.golden_answers[0]) == ["Someone"]  # the row without answers is skipped
    assert [m["role"] for m in df.prompt[0]] == ["system", "user", "assistant", "user"]
    assert df.prompt[0][-1]["content"] == "Question: who is it?"


def test_bad_sources_and_rows_are_named(local_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--test-sources: unknown source\(s\) \['squad'\]"):
        prepare(tmp_path, test_sources=["squad"], local_dir=local_dir)
    with pytest.raises(DataSourceError, match=r"no local file for popqa \(train\).*popqa/train.jsonl"):
        prepare(tmp_path, train_sources=["popqa"], local_dir=local_dir)
    write_jsonl(tmp_path / "bad" / "nq" / "test.jsonl", [{"question": "ok?", "golden_answers": ["a"]},
                                                         {"golden_answers": ["b"]}])
    with pytest.raises(DataSourceError, match=r"nq/test.jsonl:2: key 'question'"):  # file:line
        prepare(tmp_path / "o", train_sources=[], test_sources=["nq"], local_dir=tmp_path / "bad")


def test_existing_zerosearch_dataset_is_checked_and_copied(local_dir, tmp_path):
    src = tmp_path / "ZeroSearch_dataset"
    prepare(src, local_dir=local_dir, test_per_source=5)
    # Re-write with pandas, as the original dataset was written (another writer, same schema).
    for name in ("train.parquet", "test.parquet"):
        pd.read_parquet(src / name).to_parquet(src / name)
    meta = from_zerosearch(src, tmp_path / "copy")
    assert meta["splits"]["test"]["sources"]["bamboogle"] == 125
    assert (tmp_path / "copy" / "test.parquet").read_bytes() == (src / "test.parquet").read_bytes()
    broken = pd.read_parquet(src / "train.parquet").drop(columns=["prompt"])
    broken.to_parquet(src / "train.parquet")
    with pytest.raises(SchemaError, match=r"train.parquet: missing column\(s\) \['prompt'\]"):
        from_zerosearch(src)


def run_cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


def test_cli_and_wrapper_script(local_dir, tmp_path):
    res = run_cli([sys.executable, "-m", "zerosearch.data.prepare", "--out", str(tmp_path / "a"), "--local-dir",
                   str(local_dir), "--test-per-source", "3", "--train-sources", "nq"])
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["splits"]["test"]["rows"] == 6 * 3 + 125
    res = run_cli(["bash", "scripts/prepare_data.sh", "--out", str(tmp_path / "b"), "--from-zerosearch",
                   str(tmp_path / "a")], env={"PYTHON": sys.executable})
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "b" / "train.parquet").is_file()
    res = run_cli(["bash", "scripts/prepare_data.sh", "embedded", "--out", str(tmp_path / "w"), "--entities", "1000",
                   "--train", "50", "--test", "10"], env={"PYTHON": sys.executable})
    assert res.returncode == 0, res.stderr
    assert len(check_parquet(tmp_path / "w" / "test.parquet")) == 10


def test_hub_offline_fails_with_a_clear_error(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    res = run_cli([sys.executable, "-m", "zerosearch.data.prepare", "--out", str(tmp_path / "o"),
                   "--train-sources", "none", "--test-sources", "bamboogle"], env=env)
    assert res.returncode == 2
    assert "cannot load RUC-NLPIR/FlashRAG_datasets config 'bamboogle'" in res.stderr
    assert "--local-dir" in res.stderr and "--from-zerosearch" in res.stderr
    assert not (tmp_path / "o" / "test.parquet").exists()
