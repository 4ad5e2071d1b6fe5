"""Bad source files for `python -m zerosearch.data.prepare --local-dir DIR` (scripts/prepare_data.sh): exit 2 with one
error line naming the file, the line and what was expected, no traceback, and no partial output: neither a new
output dir, nor a train.parquet without its test.parquet, nor a changed file from an earlier run, nor a temporary file.

A null (or non-text) gold answer is refused rather than dropped: it means the file is broken upstream, and dropping it
would silently change what the reward checks; rows whose answers are all empty strings are still skipped with a count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from zerosearch.data.prepare import main

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"question": "who wrote it?", "golden_answers": ["someone"]}


def _source(root: Path, test_lines: list[bytes]) -> Path:
    """DIR with a good nq/train.jsonl and popqa/test.jsonl made of `test_lines` (after one good line)."""
    (root / "nq").mkdir(parents=True)
    (root / "nq" / "train.jsonl").write_text("".join(json.dumps({**GOOD, "id": i}) + "\n" for i in range(3)))
    (root / "popqa").mkdir()
    (root / "popqa" / "test.jsonl").write_bytes(json.dumps(GOOD).encode() + b"\n" + b"\n".join(test_lines) + b"\n")
    return root


def _args(src: Path, out: Path) -> list[str]:
    return ["--out", str(out), "--local-dir", str(src), "--train-sources", "nq", "--test-sources", "popqa"]


# a bad second line of popqa/test.jsonl -> what the error line says about it
CASES = [
    ("null-answer", b'{"question": "q?", "golden_answers": [null]}', "golden_answers[0] must be a string, got null"),
    ("null-among-answers", b'{"question": "q?", "golden_answers": ["a", null]}', "golden_answers[1] must be a string"),
    ("object-answer", b'{"question": "q?", "golden_answers": [{"text": "a"}]}', "golden_answers[0] must be a string"),
    ("bool-answer", b'{"question": "q?", "golden_answers": [true]}', "golden_answers[0] must be a string, got True"),
    ("answers-null", b'{"question": "q?", "golden_answers": null}', "key 'golden_answers' must be a non-empty list"),
    ("answers-missing", b'{"question": "q?"}', "key 'golden_answers' must be a non-empty list"),
    ("question-number", b'{"question": 7, "golden_answers": ["a"]}', "key 'question' must be a non-empty string"),
    ("json-array", b'["q?", ["a"]]', "expected a JSON object with 'question' and 'golden_answers', got a JSON list"),
    ("json-scalar", b"42", "expected a JSON object with 'question' and 'golden_answers', got a JSON int"),
    ("json-truncated", b'{"question": "q?", "golden_', "not valid JSON"),
    ("not-utf8", '{"question": "caf\u00e9?", "golden_answers": ["a"]}'.encode("latin-1"), "not UTF-8"),
]


def _refused(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    return errors[0]


@pytest.mark.parametrize("line, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_test_file_is_named_and_nothing_is_written(line, expected, tmp_path, capsys):
    src = _source(tmp_path / "src", [line])
    out = tmp_path / "out"
    message = _refused(capsys, _args(src, out))
    assert f"{src / 'popqa' / 'test.jsonl'}:2: " in message and expected in message, message
    assert not out.exists()  # no train.parquet without its test.parquet, no empty dir


def test_a_failed_rerun_keeps_the_previous_outputs(tmp_path, capsys):
    src, out = _source(tmp_path / "src", []), tmp_path / "out"
    main(_args(src, out))
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"train.parquet", "test.parquet", "meta.json"}
    (src / "nq" / "train.jsonl").write_text(json.dumps(GOOD) + "\n")  # a new train set, good ...
    for bad in (b'{"question": "q?", "golden_answers": [null]}\n', b"[1, 2]\n"):  # ... with a bad test set
        (src / "popqa" / "test.jsonl").write_bytes(bad)
        _refused(capsys, _args(src, out))
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # unchanged, no temporary file


def test_from_zerosearch_copies_nothing_when_one_file_is_bad(tmp_path, capsys):
    src, out = tmp_path / "zs", tmp_path / "copy"
    main(_args(_source(tmp_path / "src", []), src))
    capsys.readouterr()
    (src / "test.parquet").write_bytes(b"PAR1 not a parquet file")
    _refused(capsys, ["--out", str(out), "--from-zerosearch", str(src)])
    assert not (out / "train.parquet").exists()
    df = pd.read_parquet(src / "train.parquet")  # the source is left as it was
    assert len(df) == 3


def test_cli_bad_encoding_names_the_file(tmp_path):
    """The real command line (scripts/prepare_data.sh): exit 2, the file and line, no traceback, no output dir."""
    src = _source(tmp_path / "src", ['{"question": "caf\u00e9?", "golden_answers": ["a"]}'.encode("latin-1")])
    out = tmp_path / "out"
    r = subprocess.run(["bash", "scripts/prepare_data.sh", *_args(src, out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith(f"error: {src / 'popqa' / 'test.jsonl'}:2: not UTF-8")
    assert not out.exists()
