"""Reward: normalisation, metrics worked by hand, answer extraction, format rules, batch scoring, robustness."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl.trainer.ppo.metrics import aggregate_by_source
from zerosearch.reward import (
    RewardConfig,
    check_format,
    compute_score,
    exact_match,
    extract_answer,
    f1_score,
    normalize_answer,
    score_batch,
    substring_match,
)

GOOD = (
    "<think>I need the author.</think>\n<search>author of 1984</search>\n"
    "<information>Doc 1: 1984 is a novel by George Orwell.</information>\n"
    "<think>It is Orwell.</think>\n<answer>George Orwell</answer>"
)


# ----------------------------------------------------------------------------- normalisation and metrics
@pytest.mark.parametrize(
    "raw,expected",
    [
        ("The  Eiffel-Tower!", "eiffeltower"),
        ("An apple a day", "apple day"),
        ("Theatre of the Absurd", "theatre of absurd"),
        ("  U.S.A.  ", "usa"),
        ("Hello,\n\tWorld", "hello world"),
        ("", ""),
        ("the a an", ""),
        ("Ünïcode Straße", "ünïcode straße"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_em_and_substring_differ():
    pred, gold = "George Orwell wrote it", "George Orwell"
    assert exact_match(pred, gold) == 0.0
    assert substring_match(pred, gold) == 1.0
    assert exact_match("the george orwell.", gold) == 1.0


def test_f1_partial_overlap_by_hand():
    # pred tokens [barack, obama, president], gold [obama]: P = 1/3, R = 1, F1 = 2*(1/3)/(4/3) = 1/2
    assert f1_score("Barack Obama president", "Obama") == pytest.approx(0.5)
    # normalised pred "united states of america" (4 tokens), gold 2 tokens, overlap 2: P=1/2, R=1 -> 2/3
    assert f1_score("The United States of America", "united states") == pytest.approx(2 / 3)
    # repeated tokens count once each in the overlap: pred {new:2, york:1}, gold {new:1, york:1}: 2/3, 1 -> 0.8
    assert f1_score("new new york", "New York") == pytest.approx(0.8)
    # max over golds
    assert f1_score("George Orwell wrote it", ["Eric Blair", "George Orwell"]) == pytest.approx(2 / 3)
    assert f1_score("Paris", "London") == 0.0


def test_gold_containers_and_none_prediction():
    golds = np.array(["Eric Blair", "George Orwell"])
    assert exact_match("george orwell", golds) == 1.0
    assert exact_match("george orwell", ("x", "George Orwell")) == 1.0
    assert exact_match("george orwell", {"target": golds}) == 1.0
    for fn in (exact_match, f1_score, substring_match):
        assert fn(None, golds) == 0.0
        assert fn("anything", []) == 0.0


def test_empty_gold_never_matches_as_substring():
    assert substring_match("some long answer", ["", "the"]) == 0.0


# ----------------------------------------------------------------------------- extraction
def test_last_answer_of_response_wins():
    assert extract_answer("<answer>Paris</answer> wait <answer> London </answer>") == "London"
    assert extract_answer("<answer>a<answer>b</answer>") == "b"
    assert extract_answer("no tags") is None
    assert extract_answer("<answer>unclosed") is None
    assert extract_answer("</answer><answer>") is None


def test_answer_inside_information_is_ignored():
    resp = "<search>q</search><information>Doc: <answer>Fake</answer></information>"
    assert extract_answer(resp) is None
    assert extract_answer(resp + "<answer>Real</answer>") == "Real"
    assert extract_answer("<search>q</search><information>cut off <answer>x</answer>") is None


def test_prompt_example_answer_not_scored():
    prompt = "Answer inside tags, for example <answer> Beijing </answer>. Question: capital of China?"
    response = "<think>I am not sure.</think> I cannot tell."
    assert extract_answer(prompt + response) == "Beijing"  # what the original scored
    out = compute_score(response, ["Beijing"], format_reward=0.2)
    assert out == {"score": 0.0, "em": 0.0, "f1": 0.0, "substring": 0.0, "format_ok": 0.0, "has_answer": 0.0}


# ----------------------------------------------------------------------------- format
@pytest.mark.parametrize(
    "response",
    [
        GOOD,
        "<answer>x</answer>",
        "<think>t</think><answer>x</answer>  \n<|im_end|>",
        "<search>a</search><information>d1</information><search>b</search><information>d2</information>"
        "<answer>x</answer></s>",
        "<search>q</search><information>Doc <answer>f</answer> <search> </think></information><answer>x</answer>",
        "Let me think. <search>q</search> ok <information>d</information> so <answer>x</answer>",
    ],
)
def test_valid_formats(response):
    res = check_format(response)
    assert res.valid, res.reason
    assert res.reason == "ok" and res.n_answer == 1


@pytest.mark.parametrize(
    "response,reason",
    [
        ("<think>t</think>", "no <answer>"),
        ("<answer>a</answer><answer>b</answer>", "2 <answer> blocks"),
        ("<answer>x</answer><think>y</think>", "not the final block"),
        ("<answer>x</answer> and more", "text after"),
        ("<search>q</search><answer>x</answer>", "not followed by an <information>"),
        ("<information>d</information><answer>x</answer>", "not preceded by a <search>"),
        ("<think><search>q</search></think><answer>x</answer>", "nested"),
        ("<think>abc <answer>x</answer>", "nested"),
        ("<think>abc</think><answer>x", "unclosed <answer>"),
        ("</think><answer>x</answer>", "without a matching"),
        ("<search>q</search><information>d", "unclosed <information>"),
    ],
)
def test_invalid_formats(response, reason):
    res = check_format(response)
    assert not res.valid
    assert reason in res.reason


def test_strict_format_forbids_free_text():
    resp = "Let me see. <answer>x</answer>"
    assert check_format(resp).valid
    strict = check_format(resp, strict=True)
    assert not strict.valid and "strict" in strict.reason


def test_format_counts():
    res = check_format(GOOD)
    assert (res.n_think, res.n_search, res.n_information, res.n_answer) == (2, 1, 1, 1)
    assert res.blocks == ("think", "search", "information", "think", "answer")


# ----------------------------------------------------------------------------- scoring
def test_compute_score_metric_choice():
    resp = "<answer>George Orwell wrote it</answer>"
    f1 = compute_score(resp, "George Orwell")
    assert f1["score"] == pytest.approx(2 / 3) and f1["em"] == 0.0 and f1["substring"] == 1.0
    assert compute_score(resp, "George Orwell", metric="em")["score"] == 0.0
    assert compute_score(resp, "George Orwell", metric="substring")["score"] == 1.0


def test_format_shaping():
    bad = "<answer>Orwell</answer> trailing"
    assert compute_score(bad, "Orwell")["score"] == 1.0  # defaults: reward == metric
    assert compute_score(bad, "Orwell", format_penalty=0.3)["score"] == pytest.approx(0.7)
    assert compute_score(bad, "Paris", format_penalty=0.3)["score"] == 0.0  # clipped at 0
    assert compute_score(GOOD, "Paris", format_reward=0.2)["score"] == pytest.approx(0.2)
    assert compute_score(GOOD, "George Orwell", format_reward=0.2)["score"] == pytest.approx(1.0)
    # pred [orwell] vs gold [george, orwell]: P = 1, R = 1/2, F1 = 2/3 -> 0.2 + 0.8 * 2/3
    partial = GOOD.replace("George Orwell</answer>", "Orwell</answer>")
    assert compute_score(partial, "George Orwell", format_reward=0.2)["score"] == pytest.approx(0.2 + 0.8 * 2 / 3)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"metric": "x"}, r"reward\.metric must be one of 'f1', 'em'.*got 'x'"),
        ({"format_penalty": 1.5}, r"reward\.format_penalty"),
        ({"format_penalty": -0.1}, r"reward\.format_penalty"),
        ({"format_reward": 1.0}, r"reward\.format_reward"),
        ({"format_reward": "0.1"}, r"reward\.format_reward"),
        ({"strict_format": "yes"}, r"reward\.strict_format"),
    ],
)
def test_reward_config_validation(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        RewardConfig(**kwargs)
    with pytest.raises(ValueError, match=needle):
        RewardConfig.from_dict(kwargs)


def test_reward_config_unknown_key():
    with pytest.raises(ValueError, match=r"reward\.metrc.*valid keys there:.*metric"):
        RewardConfig.from_dict({"metrc": "f1"})


def test_score_batch_and_aggregate():
    responses = ["<answer>Paris</answer>", "<answer>big apple city</answer>", "no answer"]
    golds = [{"target": np.array(["Paris"])}, ["New York", "big apple"], "Rome"]
    sources = ["nq", "nq", "hotpotqa"]
    scores, per = score_batch(responses, golds, sources, {"metric": "em"})
    assert scores == [1.0, 0.0, 0.0]
    scores_f1, per_f1 = score_batch(responses, golds, sources, RewardConfig(metric="f1"))
    assert scores_f1 == pytest.approx([1.0, 0.8, 0.0])  # "big apple city" vs "big apple": P=2/3, R=1
    agg = aggregate_by_source(per_f1, sources, prefix="val")  # the trainer's per-source validation table
    assert agg["val/nq/em"] == pytest.approx(0.5)
    assert agg["val/nq/f1"] == pytest.approx(0.9)
    assert agg["val/nq/substring"] == pytest.approx(1.0)
    assert agg["val/nq/count"] == 2 and agg["val/hotpotqa/count"] == 1
    assert agg["val/hotpotqa/has_answer"] == 0.0
    assert agg["val/overall/f1"] == pytest.approx(1.8 / 3) and agg["val/overall/count"] == 3
    # the paper's Avg weighs each dataset the same: (0.9 + 0.0) / 2, not the row mean 0.6
    assert agg["val/dataset_avg/f1"] == pytest.approx(0.45) and agg["val/dataset_avg/datasets"] == 2
    assert aggregate_by_source([], []) == {}


def test_score_batch_length_mismatch():
    with pytest.raises(ValueError, match="ground truths"):
        score_batch(["a", "b"], ["x"], ["nq", "nq"])
    with pytest.raises(ValueError, match="data sources"):
        aggregate_by_source([{"em": 1.0}], [])


# ----------------------------------------------------------------------------- properties
_PIECES = st.sampled_from(
    [
        "<think>",
        "</think>",
        "<search>",
        "</search>",
        "<information>",
        "</information>",
        "<answer>",
        "</answer>",
        "<|im_end|>",
        "<",
        ">",
        "/",
        " ",
        "\n",
        "the",
        "Paris",
        "é",
        "\x00",
        "💡",
    ]
)
TAGGY = st.lists(st.one_of(_PIECES, st.text(max_size=8)), max_size=40).map("".join)
GOLDS = st.one_of(st.text(max_size=20), st.lists(st.text(max_size=20), max_size=4))
PLAIN = st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=15)


@settings(max_examples=300, deadline=None)
@given(
    resp=st.one_of(TAGGY, st.text()),
    golds=GOLDS,
    metric=st.sampled_from(["f1", "em", "substring"]),
    pen=st.floats(0, 1),
    fr=st.floats(0, 0.99),
)
def test_property_never_raises_scores_in_unit_interval(resp, golds, metric, pen, fr):
    extract_answer(resp)
    res = check_format(resp)
    assert isinstance(res.valid, bool) and res.reason
    out = compute_score(resp, golds, metric=metric, format_penalty=pen, format_reward=fr)
    assert set(out) == {"score", "em", "f1", "substring", "format_ok", "has_answer"}
    assert all(0.0 <= v <= 1.0 for v in out.values())
    if out["has_answer"] == 0.0:
        assert out["score"] == 0.0


@settings(max_examples=200, deadline=None)
@given(turns=st.lists(st.tuples(PLAIN, PLAIN, PLAIN), max_size=4), answer=PLAIN, think=st.booleans())
def test_property_generated_well_formed_sequences_are_valid(turns, answer, think):
    parts = []
    for thought, query, docs in turns:
        if think:
            parts.append(f"<think>{thought}</think>")
        parts.append(f"<search>{query}</search><information>{docs}</information>")
    resp = "\n".join(parts) + f"<answer>{answer}</answer><|im_end|>"
    res = check_format(resp, strict=True)
    assert res.valid, res.reason
    assert res.n_search == len(turns)
    assert extract_answer(resp) == answer.strip()
