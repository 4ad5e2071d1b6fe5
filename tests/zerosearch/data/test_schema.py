"""Schema checks: valid files pass (incl. pyarrow's ndarray variants); each defect names file and column."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from zerosearch.data.prompts import build_prompt
from zerosearch.data.schema import SchemaError, check_dataframe, check_parquet, make_row, write_parquet


def rows(n: int = 4) -> list[dict]:
    return [make_row(f"q_{i}", f"Who made thing {i}?", [f"Maker {i}", "M"], "nq", build_prompt(f"thing {i}"),
                     "train", i) for i in range(n)]


def test_valid_rows_pass_in_memory_and_after_a_parquet_round_trip(tmp_path):
    check_dataframe(pd.DataFrame(rows()), "mem")
    path = write_parquet(rows(), tmp_path / "ok.parquet")
    df = check_parquet(path)
    # pyarrow hands lists back as numpy arrays: those are accepted.
    assert isinstance(df.golden_answers[0], np.ndarray) and isinstance(df.prompt[0], np.ndarray)
    assert isinstance(df.reward_model[0]["ground_truth"]["target"], np.ndarray)


def test_pandas_written_file_with_numpy_ints_passes(tmp_path):
    df = pd.DataFrame(rows())
    df["extra_info"] = [{"split": "test", "index": np.int64(i)} for i in range(len(df))]
    df.to_parquet(tmp_path / "pd.parquet")
    check_parquet(tmp_path / "pd.parquet")


def _set(column, value, row=None):
    """Set `column` in one row, or in every row (parquet columns cannot mix a list and a str)."""
    def change(rs):
        for i, r in enumerate(rs):
            if row is None or i == row:
                r[column] = copy.deepcopy(value)
    return change


def _drop_index(rs):
    del rs[2]["extra_info"]["index"]


def _dup_index(rs):
    rs[3]["extra_info"]["index"] = 0


def _no_target(rs):
    rs[0]["reward_model"] = {"style": "rule", "ground_truth": {"answer": ["x"]}}


def _bad_role(rs):
    rs[1]["prompt"] = [{"role": "narrator", "content": "hi"}]


def _int_answers(rs):
    for r in rs:
        r["golden_answers"] = [1, 2]


CASES = [
    ("golden_answers", _set("golden_answers", "just a string"), "not a list"),
    ("golden_answers", _int_answers, "non-str item"),
    ("golden_answers", _set("golden_answers", [], row=1), "empty list"),
    ("prompt", _set("prompt", "Answer this"), "not a list of messages"),
    ("prompt", _bad_role, "role 'narrator'"),
    ("extra_info", _drop_index, "missing key 'index'"),
    ("extra_info", _dup_index, "unique"),
    ("extra_info", _set("extra_info", {"split": "train", "index": "7"}), "expected int"),
    ("reward_model", _no_target, "no key 'target'"),
    ("question", _set("question", "  ", row=2), "empty str"),
]


@pytest.mark.parametrize("column,corrupt,found", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_defects_name_file_column_and_what_was_found(tmp_path, column, corrupt, found):
    rs = copy.deepcopy(rows())
    corrupt(rs)
    path = tmp_path / "bad.parquet"
    pd.DataFrame(rs).to_parquet(path)
    with pytest.raises(SchemaError) as err:
        check_parquet(path)
    msg = str(err.value)
    assert str(path) in msg and f"'{column}'" in msg and found in msg, msg
    assert isinstance(err.value, ValueError)


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "nocol.parquet"
    pd.DataFrame(rows()).drop(columns=["reward_model"]).to_parquet(path)
    with pytest.raises(SchemaError, match=r"nocol\.parquet: missing column\(s\) \['reward_model'\]"):
        check_parquet(path)
    # A caller needing fewer columns may say so.
    check_parquet(path, required=("prompt", "extra_info"))


def test_unreadable_and_absent_files(tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(SchemaError, match="junk.parquet: cannot be read as parquet"):
        check_parquet(junk)
    with pytest.raises(FileNotFoundError, match="absent.parquet"):
        check_parquet(tmp_path / "absent.parquet")
    with pytest.raises(SchemaError, match="no rows"):
        check_dataframe(pd.DataFrame(rows()).iloc[:0], "empty")


def test_write_parquet_refuses_bad_rows(tmp_path):
    rs = rows()
    rs[0]["golden_answers"] = "x"
    with pytest.raises(SchemaError, match="golden_answers"):
        write_parquet(rs, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()
