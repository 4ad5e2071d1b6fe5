"""`scripts/evaluate.sh` and `zerosearch.infer` end to end on a small embedded world with local BM25.

- the table, the summary and the trajectory records, recomputed here from the records;
- two greedy evaluations of the same model give the same answers row by row;
- an evaluation killed (SIGKILL) after its first batch and run again gives the uninterrupted run's table;
- evaluation and the trainer's validation (Ray, FSDP2 worker, vLLM inside it) give the same numbers on the same rows;
- `infer` shows a trajectory turn by turn with a search.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from zerosearch.reward import exact_match, extract_answer, f1_score

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SUBSET = ["MAX_SAMPLES", "4", "BATCH_SIZE", "3"]  # 4 questions of each source: 8, in batches of 3, 3 and 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    subprocess.run([sys.executable, "-m", "zerosearch.data.world", "--out", str(out), "--entities", "1000",
                    "--train", "64", "--test", "16"], check=True, capture_output=True)
    return out


def _evaluate(world: Path, out: Path, *extra: str, rollout: str = "hf", **popen) -> subprocess.CompletedProcess:
    cmd = ["bash", str(ROOT / "scripts" / "evaluate.sh"), "DATA_PATH", str(world), "SEARCH_ENGINE", "local",
           "ROLLOUT", rollout, *SUBSET, "OUT", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ,
                                                                                 "PYTHON": sys.executable})


@pytest.fixture(scope="module")
def first(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "a"
    proc = _evaluate(world, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]


def test_table_summary_and_records(first, world):
    out, proc = first
    recs = _records(out)
    df = pd.read_parquet(world / "test.parquet")
    want = [i for s in ("embedded_1hop", "embedded_2hop") for i in df.index[df.data_source == s][:4]]
    assert sorted(r["row"] for r in recs) == sorted(want)  # every selected row scored once, the partial batch too
    assert sorted({r["batch"] for r in recs}) == [0, 1, 2]
    for r in recs:
        gold = list(df.loc[r["row"], "golden_answers"])
        assert r["question"] == df.loc[r["row"], "question"] and r["golden_answers"] == gold
        assert r["answer"] == extract_answer(r["response"])  # the answer of the response only
        assert r["em"] == exact_match(r["answer"], gold) and r["f1"] == pytest.approx(f1_score(r["answer"], gold))
        assert r["response"].count("<information>") >= r["num_searches"] == len(r["queries"])
        assert r["stop_reason"] in ("answer", "eos", "length", "no_answer", "max_turns")
    summary = json.loads((out / "summary.json").read_text())
    res = summary["results"]
    for source in ("embedded_1hop", "embedded_2hop"):
        mine = [r["em"] for r in recs if r["data_source"] == source]
        assert res["sources"][source]["em"] == pytest.approx(sum(mine) / len(mine))
        assert res["sources"][source]["questions"] == 4
    assert res["avg"]["em"] == pytest.approx((res["sources"]["embedded_1hop"]["em"] +
                                              res["sources"]["embedded_2hop"]["em"]) / 2)
    assert summary["questions"] == 8 and summary["questions_per_s"] > 0
    assert summary["cost"]["searches"] == sum(r["num_searches"] for r in recs)
    assert summary["cost"]["search_calls"] >= summary["cost"]["searches"]
    assert summary["cost"]["tokens_generated"] == sum(r["response_tokens"] for r in recs) > 0
    assert summary["settings"]["search_engine"] == "local" and summary["settings"]["max_turns"] == 2
    assert {"torch", "transformers", "python"} <= set(summary["versions"])
    table = (out / "table.md").read_text()
    assert "| metric | embedded_1hop | embedded_2hop | Avg |" in table
    assert table.strip() in proc.stdout  # printed too
    # the console stayed quiet: no library output, no traceback (the log has them)
    assert "Traceback" not in proc.stderr and "Loading weights" not in proc.stderr
    assert "HFRollout" in (out / "eval.log").read_text()


def test_greedy_twice_gives_the_same_answers(first, world, tmp_path):
    out_a, _ = first
    proc = _evaluate(world, tmp_path / "b")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = {r["row"]: (r["response"], r["answer"]) for r in _records(out_a)}
    b = {r["row"]: (r["response"], r["answer"]) for r in _records(tmp_path / "b")}
    assert a == b
    cmp = subprocess.run([sys.executable, "-m", "zerosearch.eval", "--compare", str(out_a), str(tmp_path / "b")],
                         capture_output=True, text=True, timeout=120)
    assert cmp.returncode == 0, cmp.stderr
    assert "| b - a | +0.0 | +0.0 | +0.0 |" in cmp.stdout


def test_killed_and_resumed_gives_the_uninterrupted_table(first, world, tmp_path):
    out_a, _ = first
    out = tmp_path / "killed"
    cmd = ["bash", str(ROOT / "scripts" / "evaluate.sh"), "DATA_PATH", str(world), "SEARCH_ENGINE", "local",
           "ROLLOUT", "hf", *SUBSET, "OUT", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "PYTHON": sys.executable})
    marks = out / "batches.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if marks.exists() and marks.read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the evaluation ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert 0 < len(_records(out)) < 8
    assert not (out / "summary.json").exists()
    resumed = _evaluate(world, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    assert (out / "table.md").read_text() == (out_a / "table.md").read_text()
    assert json.loads((out / "summary.json").read_text())["results"] == \
        json.loads((out_a / "summary.json").read_text())["results"]
    assert sorted((r["row"], r["sample"]) for r in _records(out)) == sorted((r["row"], r["sample"])
                                                                           for r in _records(out_a))
    # the same OUT with other settings is refused, naming them
    other = _evaluate(world, out, "MAX_TURNS", "1")
    assert other.returncode == 2 and "max_turns: 2 -> 1" in other.stderr


def test_evaluation_equals_the_trainers_validation(world, tmp_path):
    """The same rows through the trainer (val_only: Ray, an FSDP2 worker holding a vLLM engine, the lockstep rollout)
    and through evaluate.sh (vLLM's AsyncLLM in the evaluating process, the asynchronous agent loop): the same
    per-source EM / F1 / substring and the same Avg."""
    from verl.trainer.main_ppo import compose_config, run

    df = pd.read_parquet(world / "test.parquet")
    subset = pd.concat([df[df.data_source == s].iloc[:4] for s in ("embedded_1hop", "embedded_2hop")])
    subset_file = tmp_path / "subset.parquet"
    subset.to_parquet(subset_file)
    cfg = compose_config("zerosearch", [
        f"data.train_files=[{world}/train.parquet]", f"data.val_files=[{subset_file}]", "data.val_batch_size=3",
        "actor_rollout_ref.rollout.name=vllm", "trainer.device=cpu", "trainer.n_gpus_per_node=1",
        "trainer.val_only=true", "trainer.val_before_train=true", "trainer.logger=[jsonl]",
        "trainer.resume_mode=disable", "trainer.memory_plan=off", f"trainer.default_local_dir={tmp_path / 'run'}",
        "search.val_mode=local", f"search.corpus_path={world}/corpus.jsonl",
    ])
    val = run(cfg)["val_history"][0]
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "evaluate.sh"), "DATA_PATH", str(subset_file),
                           "CORPUS_PATH", f"{world}/corpus.jsonl", "SEARCH_ENGINE", "local", "BATCH_SIZE", "3",
                           "OUT", str(tmp_path / "eval"), "actor_rollout_ref.rollout.mode=async"],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "eval" / "summary.json").read_text())["results"]
    assert res["overall"]["has_answer"] > 0  # the comparison is not of zeros only
    for source in ("embedded_1hop", "embedded_2hop"):
        for metric in ("em", "f1", "substring", "has_answer", "format_ok"):
            assert res["sources"][source][metric] == pytest.approx(val[f"val/{source}/{metric}"]), (source, metric)
        assert res["sources"][source]["questions"] == val[f"val/{source}/count"]
    for metric in ("em", "f1", "substring", "has_answer"):
        assert res["avg"][metric] == pytest.approx(val[f"val/dataset_avg/{metric}"])
        assert res["overall"][metric] == pytest.approx(val[f"val/overall/{metric}"])


def test_infer_shows_the_trajectory_turn_by_turn(world):
    df = pd.read_parquet(world / "test.parquet")
    question, gold = df.iloc[0]["question"], list(df.iloc[0]["golden_answers"])
    base = [sys.executable, "-m", "zerosearch.infer", question, "--gold", gold[0], "ROLLOUT", "hf",
            "SEARCH_ENGINE", "local", "CORPUS_PATH", f"{world}/corpus.jsonl", "LOG", str(world / "infer.log"),
            "data.assistant_prefix='<search>'"]  # the answer opens with a search: one is certain
    proc = subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    roles = [t["role"] for t in res["turns"]]
    assert roles[0] == "model" and "search" in roles and res["num_searches"] >= 1
    first_search = res["turns"][roles.index("search")]
    assert first_search["query"] and first_search["documents"].startswith("<information>")
    assert first_search["query"] in res["turns"][0]["text"]  # the query the model wrote before it
    assert res["stop_reason"] in ("answer", "eos", "length", "no_answer", "max_turns")
    assert res["gold"] == gold and res["em"] in (0.0, 1.0)
    human = subprocess.run(base, capture_output=True, text=True, timeout=600)
    assert human.returncode == 0, human.stderr[-3000:]
    lines = human.stdout.splitlines()
    assert lines[0] == f"Question: {question}"
    assert lines.index("--- turn 1: model") < next(i for i, x in enumerate(lines) if x.startswith("--- search: "))
    assert any(x.startswith("--- answer: ") and f"gold: {gold[0]}" in x for x in lines)
