"""Evaluation bookkeeping without models: pass@k, per-dataset figures and the paper's Avg, the table layout,
side-by-side comparison, resumable records, and the command line's checks."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from verl.utils.tracking import read_jsonl
from zerosearch import eval as ev
from zerosearch.eval_report import compare_tables, format_table, ks_for, pass_at_k, source_order, summarize
from zerosearch.eval_setup import UsageError, parse_keys, resolve_model


def _brute_pass_at_k(outcomes: list[int], k: int) -> float:
    draws = list(itertools.combinations(outcomes, k))
    return sum(any(d) for d in draws) / len(draws)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_is_the_probability_over_all_k_subsets(n):
    rng = random.Random(n)
    for _ in range(10):
        outcomes = [rng.random() < 0.4 for _ in range(n)]
        for k in range(1, n + 1):
            assert pass_at_k(n, sum(outcomes), k) == pytest.approx(_brute_pass_at_k(outcomes, k))
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k(3, 4, 1)
    assert ks_for(1) == [1] and ks_for(5) == [1, 2, 4, 5] and ks_for(8) == [1, 2, 4, 8]


def _rec(source: str, row: int, sample: int, em: float, **kw) -> dict:
    base = {"data_source": source, "row": row, "sample": sample, "em": em, "f1": kw.pop("f1", em),
            "substring": em, "has_answer": 1.0, "format_ok": 1.0, "num_searches": 1, "num_turns": 2,
            "response_tokens": 10, "stop_reason": "answer"}
    return {**base, **kw}


def test_avg_weighs_every_dataset_once_and_overall_every_row():
    records = [_rec("nq", i, 0, 1.0) for i in range(3)] + [_rec("nq", 3, 0, 0.0)] + [_rec("bamboogle", 9, 0, 0.0)]
    s = summarize(records, n=1)
    assert s["order"] == ["nq", "bamboogle"]  # the paper's order
    assert s["sources"]["nq"]["em"] == pytest.approx(0.75) and s["sources"]["bamboogle"]["em"] == 0.0
    assert s["avg"]["em"] == pytest.approx(0.375)  # (0.75 + 0) / 2
    assert s["overall"]["em"] == pytest.approx(0.6)  # 3 of 5 rows
    assert s["avg"]["datasets"] == 2 and s["avg"]["questions"] == 5


def test_samples_give_mean_at_n_and_pass_at_k():
    # question 0: 1 of 4 samples right; question 1: none
    records = [_rec("hotpotqa", 0, j, float(j == 2)) for j in range(4)] + [_rec("hotpotqa", 1, j, 0.0)
                                                                             for j in range(4)]
    fig = summarize(records, n=4)["sources"]["hotpotqa"]
    assert fig["em"] == pytest.approx(1 / 8)  # mean@4 over all samples
    assert fig["pass@1"] == pytest.approx((1 / 4 + 0) / 2)
    assert fig["pass@2"] == pytest.approx((1 - 3 / 6) / 2)  # C(3,2)/C(4,2) draws miss the right one
    assert fig["pass@4"] == pytest.approx(0.5)
    assert fig["questions"] == 2 and fig["samples"] == 8


def test_table_follows_the_paper_layout():
    records = [_rec(s, i, 0, 1.0) for i, s in enumerate(["bamboogle", "zeta_custom", "nq", "musique", "triviaqa"])]
    s = summarize(records, n=1)
    assert source_order(["bamboogle", "zeta_custom", "nq", "alpha_custom"]) == ["nq", "bamboogle", "alpha_custom",
                                                                               "zeta_custom"]
    table = format_table(s, n=1, title="t")
    header = next(line for line in table.splitlines() if line.startswith("| metric"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "metric", "NQ (1-hop)", "TriviaQA (1-hop)", "Musique (multi-hop)", "Bamboogle (multi-hop)", "zeta_custom",
        "Avg"]
    em = next(line for line in table.splitlines() if line.startswith("| EM |"))
    assert em.count("100.0") == 6  # five datasets and Avg
    assert "PopQA" not in table  # absent datasets are left out
    table4 = format_table(summarize([_rec("nq", 0, j, float(j == 0)) for j in range(4)], n=4), n=4)
    assert "| EM (mean@4) |" in table4 and "| pass@4 (EM) | 100.0 | 100.0 |" in table4


def test_compare_shows_each_run_and_the_differences():
    a = {"results": summarize([_rec("nq", 0, 0, 1.0), _rec("nq", 1, 0, 0.0)], 1), "settings": {"model": "a"}}
    b = {"results": summarize([_rec("nq", 0, 0, 1.0), _rec("nq", 1, 0, 1.0), _rec("popqa", 2, 0, 1.0)], 1),
         "settings": {"model": "b"}}
    text = compare_tables([a, b], ["base", "trained"])
    lines = text.splitlines()
    assert "| base | 50.0 | - | 50.0 |" in lines
    assert "| trained | 100.0 | 100.0 | 100.0 |" in lines
    assert "| trained - base | +50.0 | - | +50.0 |" in lines


def test_committed_keeps_whole_batches_only(tmp_path):
    batches = [[0, 1], [2, 3], [4]]
    recs = [{"batch": 0, "row": r, "sample": 0} for r in (0, 1)] + [{"batch": 1, "row": 2, "sample": 0}]
    ev.append_jsonl(tmp_path / ev.RECORDS, recs)
    with open(tmp_path / ev.RECORDS, "a") as f:
        f.write('{"batch": 1, "row": 3, "sam')  # the kill cut this line
    ev.append_jsonl(tmp_path / ev.BATCHES, [{"batch": 0, "seconds": 1.0}])  # batch 1 was never committed
    done = ev.committed(tmp_path, batches, n=1)
    assert sorted(done) == [0]
    kept = read_jsonl(tmp_path / ev.RECORDS)
    assert [(r["batch"], r["row"]) for r in kept] == [(0, 0), (0, 1)]
    assert (tmp_path / ev.RECORDS).read_text().endswith("\n")


def test_select_rows_takes_the_first_of_each_source():
    assert ev.select_rows(["a", "b", "a", "a", "b", "c"], 2) == [0, 1, 2, 4, 5]
    assert ev.select_rows(["a", "b"], -1) == [0, 1]


def test_settings_of_another_evaluation_are_refused(tmp_path):
    ev.check_settings(tmp_path, {"max_turns": 2, "model": "m"})
    ev.check_settings(tmp_path, {"max_turns": 2, "model": "m"})  # the same: resume
    with pytest.raises(UsageError, match="max_turns: 2 -> 3"):
        ev.check_settings(tmp_path, {"max_turns": 3, "model": "m"})


def test_model_path_forms(tmp_path):
    run = tmp_path / "run"
    hf = run / "global_step_3" / "huggingface"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (run / "global_step_3" / "trainer_state.json").write_text("{}")
    (run / "latest_checkpointed_iteration.txt").write_text("3")
    assert resolve_model(str(run))[0] == str(hf)  # a run: its latest complete step
    assert resolve_model(str(run / "global_step_3"))[0] == str(hf)
    assert resolve_model(str(hf))[0] == str(hf)
    assert resolve_model("org/model") == ("org/model", "hub id")
    with pytest.raises(UsageError, match="no such directory"):
        resolve_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_command_line_errors_name_the_key(capsys):
    with pytest.raises(UsageError, match="unknown key 'MODLE_PATH'"):
        parse_keys(["MODLE_PATH", "x"], ev.KEYS)
    with pytest.raises(UsageError, match="N has no value"):
        parse_keys(["N"], ev.KEYS)
    assert ev.main(["N", "4", "TEMPERATURE", "0"]) == 2
    assert "identical greedy answers" in capsys.readouterr().err
    assert ev.main(["DATA_PATH", "/nonexistent/x.parquet"]) == 2
    assert "DATA_PATH '/nonexistent/x.parquet' does not exist" in capsys.readouterr().err
    assert ev.main(["SEARCH_ENGINE", "bing"]) == 2
    assert "SEARCH_ENGINE must be auto or one of" in capsys.readouterr().err
    assert ev.main(["--compare", "only_one"]) == 2


@pytest.mark.parametrize("key,value,says", [
    ("PORT", "99999", "PORT must be in [1, 65535]"),
    ("IP", "10.0.0.1,not a host", "IP expects IPv4 addresses or host names"),
    ("TOPK", "0", "TOPK must be in [1, 1000]"),
    ("MAX_TURNS", "-1", "MAX_TURNS must be >= 0"),
    ("RETRIEVER_URL", "ftp://127.0.0.1", "RETRIEVER_URL expects http(s)://HOST[:PORT]"),
    ("DEVICE", "tpu", "DEVICE must be auto or cpu or cuda"),
    ("ROLLOUT", "sglang", "ROLLOUT must be vllm or hf"),
    ("DTYPE", "fp8", "DTYPE must be one of auto, fp32"),
    ("TEMPERATURE", "nan", "TEMPERATURE expects a finite number"),
    ("TEMPERATURE", "-0.5", "TEMPERATURE must be >= 0"),
    ("TOP_P", "0", "TOP_P must be in (0, 1]"),
    ("TOP_P", "1.5", "TOP_P must be in [0, 1]"),
    ("SEED", "one", "SEED expects an integer"),
    ("MAX_SAMPLES", "0", "MAX_SAMPLES must be >= 1 (or -1: all)"),
    ("BATCH_SIZE", "0", "BATCH_SIZE must be >= 1"),
    ("VERBOSE", "maybe", "VERBOSE"),
    ("SIMULATION_LLM", " ", "SIMULATION_LLM is empty"),
])
def test_evaluate_checks_its_values_as_the_train_scripts_do(capsys, tmp_path, key, value, says):
    """The keys evaluate.sh shares with the train scripts get the same checks, before any file is read or written."""
    out = tmp_path / "out"
    assert ev.main([key, value, "OUT", str(out), "DATA_PATH", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err
    assert not out.exists()


def test_a_checkpoint_trained_with_other_rollout_settings_is_named(tmp_path):
    from zerosearch.eval_setup import COMMON_KEYS, build_setup, training_mismatches

    run = tmp_path / "run"
    hf = run / "global_step_2" / "huggingface"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (run / "logs").mkdir()
    (run / "logs" / "config.json").write_text(json.dumps({"search": {"max_turns": 3, "topk": 3},
                                                          "data": {"max_response_length": 320}}))
    values = {k: d for k, (d, _) in COMMON_KEYS.items()} | {"MODEL_PATH": str(hf.parent), "SEARCH_ENGINE": "local"}
    setup = build_setup(values, [], [], None)
    assert training_mismatches(setup) == ["MAX_TURNS 2 (trained with 3)"]
    assert training_mismatches(build_setup({**values, "MAX_TURNS": "3"}, [], [], None)) == []
