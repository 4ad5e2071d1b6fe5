"""Prompts: message structure, a demo that the reward module accepts, and the token budget."""

from __future__ import annotations

import pytest

from zerosearch.data.prompts import DEMO_RESPONSE, INSTRUCTION, SYSTEM_RULE, build_prompt
from zerosearch.reward import check_format, extract_answer


def test_oneshot_is_system_demo_then_question():
    msgs = build_prompt("Who founded Dabick Motors")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"] == SYSTEM_RULE
    assert msgs[-1]["content"] == "Question: Who founded Dabick Motors?"
    demo = msgs[2]["content"]
    assert demo.index("<search>") < demo.index("<information>") < demo.index("<answer>")


def test_demo_is_a_well_formed_rewarded_trajectory():
    result = check_format(DEMO_RESPONSE)
    assert result.valid, result.reason
    assert (result.n_search, result.n_information, result.n_answer) == (1, 1, 1)
    assert extract_answer(DEMO_RESPONSE) == "Jexmoor"


def test_zeroshot_is_one_user_message_with_the_instruction():
    msgs = build_prompt("  what is the capital of Fledustem? ", style="zeroshot")
    assert msgs == [{"role": "user", "content": f"{INSTRUCTION}\nQuestion: what is the capital of Fledustem?"}]
    for tag in ("<search>", "</search>", "<information>", "</information>", "<answer>", "</answer>"):
        assert tag in INSTRUCTION


def test_bad_input():
    with pytest.raises(ValueError, match="prompt style"):
        build_prompt("q", style="fewshot")
    with pytest.raises(ValueError, match="empty"):
        build_prompt("   ")


def test_oneshot_prompt_fits_the_token_budget(embedded_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    question = "In which city is the company founded by Vaestel Plondorel headquartered?"
    for style, budget in (("oneshot", 300), ("zeroshot", 200)):
        text = tok.apply_chat_template(build_prompt(question, style), add_generation_prompt=True, tokenize=False)
        n_tokens = len(tok(text, add_special_tokens=False)["input_ids"])
        assert n_tokens < budget, (style, n_tokens)
