"""Simulator prompts (both families) and the robust parser of simulator output."""

from __future__ import annotations

from zerosearch.search.base import Doc
from zerosearch.search.sim_prompts import parse_documents, prompt_messages, sft_messages, sft_prompt, sft_target


def test_sft_format_is_exact_and_round_trips():
    assert sft_prompt("capital of Ostrana", "What is the capital of Ostrana?", ["Velmora", "Velmora City"],
                      "useful", 5) == (
        "search simulation (useful)\nquery: capital of Ostrana\nquestion: What is the capital of Ostrana?\n"
        "answer: Velmora | Velmora City\ndocuments: 5"
    )
    assert sft_prompt("q", "", [], "noisy", 3) == "search simulation (noisy)\nquery: q\ndocuments: 3"
    # a noisy request never carries the answer (a simulator that never sees it cannot leak it)
    assert sft_prompt("q", "Who?", ["Velmora"], "noisy", 3) == (
        "search simulation (noisy)\nquery: q\nquestion: Who?\ndocuments: 3")
    assert sft_messages("q", "", [], "noisy", 3) == [{"role": "user", "content": sft_prompt("q", "", [], "noisy", 3)}]
    docs = [Doc("Velmora", "Velmora is the capital\n of Ostrana."), Doc("Quell", "A river.")]
    target = sft_target(docs)
    assert target == "Doc 1 (Title: Velmora) Velmora is the capital of Ostrana.\nDoc 2 (Title: Quell) A river."
    assert parse_documents(target, 5) == [Doc("Velmora", "Velmora is the capital of Ostrana."),
                                          Doc("Quell", "A river.")]


def test_prompt_mode_has_one_shot_example_and_the_request():
    msgs = prompt_messages("capital of Ostrana", "What is the capital?", ["Velmora"], "useful", 4)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[2]["content"].startswith("Doc 1 (Title: ")
    assert "Query: capital of Ostrana" in msgs[3]["content"] and "Correct answer: Velmora" in msgs[3]["content"]
    assert "Write 4 result documents" in msgs[3]["content"]
    noisy = prompt_messages("capital of Ostrana", "What is the capital?", ["Velmora"], "noisy", 4)
    assert "none of them may contain" in noisy[3]["content"] and "Correct answer" not in noisy[3]["content"]
    assert noisy[2]["content"] != msgs[2]["content"]


def test_parser_handles_what_models_write():
    cases = {
        "Here are 3 documents:\nDoc 1 (Title: A) alpha text.\nDoc 2 (Title: B) beta text.<|im_end|>":
            [("A", "alpha text."), ("B", "beta text.")],
        "Doc 1: Alpha is first.\n\nDoc 2: Beta is second.": [("Alpha is first", "Alpha is first."),
                                                                ("Beta is second", "Beta is second.")],
        "1. **Alpha**: first one.\n2) Beta - second one.": [("Alpha", "first one."),
                                                             ("Beta - second one", "Beta - second one.")],
        "Sure! Here you go:\n\nAlpha\nAlpha is a letter.\n\nBeta is another letter.":
            [("Alpha", "Alpha is a letter."), ("Beta is another letter", "Beta is another letter.")],
        '"Alpha"\nAlpha is a letter.': [("Alpha", "Alpha is a letter.")],
        "Title: Alpha\nText: Alpha is a letter.": [("Alpha", "Alpha is a letter.")],
        "[1] Alpha, a letter.\n[2] Beta, too.": [("Alpha", "Alpha, a letter."), ("Beta", "Beta, too.")],
        "**Document 1** Title: Foo\nbar baz.\n**Document 2** Title: Bar\nqux.": [("Foo", "bar baz."), ("Bar", "qux.")],
        "": [],
        "  \n<|im_end|>": [],
    }
    for text, expected in cases.items():
        got = [(d.title, d.text) for d in parse_documents(text, 5)]
        assert got == expected, (text, got)


def test_parser_truncates_dedupes_and_caps_length():
    text = "\n".join(f"Doc {i} (Title: T{i}) text {i}" for i in range(1, 9)) + "\nDoc 9 (Title: X) text 1"
    assert [d.title for d in parse_documents(text, 5)] == ["T1", "T2", "T3", "T4", "T5"]
    assert len(parse_documents("Doc 1 (Title: a) one\nDoc 2 (Title: b) one", 5)) == 1
    long = parse_documents("Doc 1 (Title: L) " + "word " * 500, 5, max_chars=100)[0]
    assert len(long.text) <= 100
    assert long.text.endswith("word") and len(long.text) >= 50  # cut at a word break


def test_cap_never_leaves_a_stub():
    """Found by the fuzz test: a cap at a word break near the start left a 1-character document ('0')."""
    docs = parse_documents("0\r0\r<search><search>", 1, max_chars=16)
    assert docs and len(docs[0].text) == 16
    assert all(len(d.text) >= 3 for d in parse_documents("ab " + "x" * 40, 3, max_chars=16))
