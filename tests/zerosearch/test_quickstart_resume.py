"""The quickstart's planning rules on hand-made run directories: resume without validating again, a line cut by a
kill, a fresh start after a finished run or a kill in the first validation, and the before/after table (the first
step-0 validation, the last final one). SIGKILL of a real run and its resume, with the data order and no step
logged twice or lost, is tests/reliability/test_faults.py (one chain of seven launcher sessions).
"""

import json
from pathlib import Path

from verl.utils import checkpoint as ckpt
from zerosearch.quickstart import before_after, plan_run, read_val_rows


def _val(step: int, em: float) -> dict:
    return {"step": step, "val/overall/em": em, "val/overall/f1": em, "val/overall/count": 4}


def _write(run: Path, records: list[dict], checkpoints: list[int], tail: str = "") -> Path:
    metrics = run / "logs" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    for step in checkpoints:
        (ckpt.step_dir(run, step) / "actor").mkdir(parents=True)
        ckpt.mark_complete(run, step, {"global_step": step})
    return metrics


def test_table_takes_the_first_step0_and_the_last_final_validation():
    # a step logged but not checkpointed (time condition) is logged again when it is redone after a resume
    rows = [_val(0, 0.1), _val(2, 0.3), _val(0, 0.9), _val(4, 0.2), _val(4, 0.5)]
    before, after = before_after(rows)
    assert before["val/overall/em"] == 0.1 and after["val/overall/em"] == 0.5
    assert before_after([_val(0, 0.1)]) is None and before_after([]) is None


def test_plan_resumes_without_validating_again_and_mends_a_cut_line(tmp_path, capsys):
    run = tmp_path / "run"
    metrics = _write(run, [_val(0, 0.25), {"step": 1}, {"step": 2}], [1, 2], tail='{"step": 3, "actor/pg')
    assert plan_run(run, 4) == ["VAL_BEFORE_TRAIN", "false"]
    assert "quickstart: resuming from step 2 of 4" in capsys.readouterr().out
    assert metrics.read_text().endswith('"actor/pg\n')  # the next record starts on its own line
    assert [r["step"] for r in read_val_rows(metrics)] == [0]


def test_plan_fresh_cases(tmp_path, capsys):
    assert plan_run(tmp_path / "none", 4) == []  # nothing there
    killed_in_val = tmp_path / "killed_in_val"
    _write(killed_in_val, [], [])
    assert plan_run(killed_in_val, 4) == []  # no step-0 validation logged: validate first
    assert capsys.readouterr().out == ""
    # a finished run: moved aside (without its optimizer state), a fresh run starts
    done = tmp_path / "done"
    _write(done, [_val(0, 0.1), {"step": 1}, {"step": 2}, _val(2, 0.3)], [1, 2])
    assert plan_run(done, 2) == []
    assert "had finished; starting a fresh one" in capsys.readouterr().out
    old = tmp_path / "done.previous"
    assert not done.exists() and (old / "logs" / "metrics.jsonl").exists()
    assert (old / "global_step_2" / "trainer_state.json").exists() and not (old / "global_step_2" / "actor").exists()
