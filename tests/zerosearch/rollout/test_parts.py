"""Fast tests of the search rollout's parts: config validation, action parsing, observation tokens, records."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from verl.protocol import DataProto
from zerosearch.rollout import GenerationConfig, LockstepRollout, Trajectory, rollout_metrics, trajectory_records
from zerosearch.rollout.actions import open_tag_suffix, parse_action
from zerosearch.rollout.factory import GENERATION_FIELDS_FROM_ELSEWHERE, GENERATION_KEYS, split_search_section
from zerosearch.rollout.observation import ObservationRenderer, chat_wrapper


@pytest.fixture(scope="module")
def tokenizer(embedded_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_path)


def test_config_defaults_and_errors_name_the_key():
    cfg = GenerationConfig()
    assert cfg.max_turns == 2 and cfg.stop == ["</search>", "</answer>"] and cfg.final_stop == ["</answer>"]
    with pytest.raises(ValueError, match=r"search\.max_turn\b.*valid keys there:.*max_turns"):
        GenerationConfig.from_dict({"max_turn": 3})
    with pytest.raises(ValueError, match=r"search\.observation_format"):
        GenerationConfig.from_dict({"observation_format": "xml"})
    with pytest.raises(ValueError, match=r"search\.final_stop.*cannot search"):
        GenerationConfig(final_stop=["</answer>", "</search>"])
    with pytest.raises(ValueError, match=r"search\.max_response_length"):
        GenerationConfig(max_response_length=0)
    with pytest.raises(ValueError, match=r"search\.on_eos_without_action"):
        GenerationConfig.from_dict({"on_eos_without_action": "retry"})
    assert GenerationConfig.from_dict({"max_turns": 0, "topk": 2}).topk == 2
    with pytest.raises(ValueError, match=r"search\.final_turn.*generate nothing"):
        GenerationConfig(max_turns=0, final_turn="none")


def test_parse_action_first_complete_action():
    assert parse_action("I think.\n<search> who wrote X </search>") == ("search", "who wrote X")
    assert parse_action("<answer> Paris </answer>") == ("answer", "Paris")
    assert parse_action("<search>a</search> then <answer>b</answer>") == ("search", "a")
    assert parse_action("<search>a</search> then <answer>b</answer>", prefer_answer=True) == ("answer", "b")
    assert parse_action("no tags at all") == (None, "")
    assert parse_action("query only</search>") == (None, "")  # closing tag without an opening one
    assert parse_action("<search>   </search>") == (None, "")  # empty query is invalid
    assert parse_action("<answer>x") == (None, "")


def test_open_tag_suffix_finds_prefilled_tag():
    assert open_tag_suffix("assistant\n<search> Ann") == "<search> Ann"
    assert open_tag_suffix("assistant\n<search> a </search>") == ""
    assert open_tag_suffix("plain text") == ""
    assert parse_action(open_tag_suffix("...\n<search>") + " Ann born </search>") == ("search", "Ann born")


def test_inline_observation_is_wrapped_and_cut_to_fit(tokenizer):
    cfg = GenerationConfig(max_obs_length=40)
    r = ObservationRenderer(tokenizer, cfg)
    docs = "Doc 1(Title: A) " + "word " * 200
    obs = r.observation(docs, limit=1000)
    assert len(obs) == 40  # max_obs_length caps it
    text = tokenizer.decode(obs)
    assert text.startswith("\n\n<information>Doc 1(Title: A) word") and text.endswith("</information>\n\n")
    small = r.observation(docs, limit=12)  # the remaining response budget caps it too
    assert len(small) == 12 and tokenizer.decode(small).endswith("</information>\n\n")
    assert r.observation(docs, limit=r.min_observation_tokens - 1) == []
    full = tokenizer.decode(r.observation("Doc 1(Title: T) short", limit=1000))
    assert full == "\n\n<information>Doc 1(Title: T) short</information>\n\n"
    assert tokenizer.decode(r.corrective()) == "\n" + cfg.invalid_action_message + "\n"
    with pytest.raises(ValueError, match="max_obs_length"):
        ObservationRenderer(tokenizer, GenerationConfig(max_obs_length=5))


def test_chat_observation_uses_the_template(tokenizer):
    before, after = chat_wrapper(tokenizer, "user")
    assert before == "<|im_end|>\n<|im_start|>user\n" and after == "<|im_end|>\n<|im_start|>assistant\n"
    r = ObservationRenderer(tokenizer, GenerationConfig(observation_format="chat"))
    text = tokenizer.decode(r.observation("Doc 1(Title: T) x", limit=1000))
    assert text == "<|im_end|>\n<|im_start|>user\n<information>Doc 1(Title: T) x</information><|im_end|>\n" \
                   "<|im_start|>assistant\n"
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # after a policy EOS (<|im_end|>) the turn is not closed a second time
    assert tokenizer.decode(r.corrective(last_token=eos)).startswith("\n<|im_start|>user\nMy previous action")


def _row(turns, valid, searches, finished, queries=()):
    row = Trajectory(index=0, prompt=[1], question="q", golden_answers=["a"])
    row.turns, row.valid_actions, row.searches, row.finished = turns, valid, searches, finished
    row.queries = list(queries)
    return row


def test_rollout_metrics():
    m = rollout_metrics([_row(3, 3, 2, True), _row(1, 0, 0, False)])
    assert m["env/number_of_actions/mean"] == 2.0 and m["env/number_of_actions/max"] == 3.0
    assert m["env/number_of_actions/min"] == 1.0 and m["env/finish_ratio"] == 0.5
    assert m["env/number_of_valid_action"] == 1.5 and m["env/ratio_of_valid_action"] == 0.5
    assert m["env/number_of_valid_search"] == 1.0 and m["env/turns_mean"] == 2.0


def test_trajectory_records_are_json_ready():
    out = DataProto.from_dict(
        tensors={"token_level_scores": torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.5, 0.0]])},
        non_tensors={"question": ["q1", "q2", "q3"], "golden_answers": [np.array(["a", "b"]), ["c"], ["d"]],
                     "response_text": ["r1", "r2", "r3"], "num_turns": [2, 1, 1], "num_searches": [1, 0, 0],
                     "search_queries": [["x"], [], []], "finished": [True, False, True]})
    recs = trajectory_records(out, 2)
    assert [r["score"] for r in recs] == [1.0, 0.0]
    assert recs[0]["golden_answers"] == ["a", "b"] and recs[0]["search_queries"] == ["x"]
    json.dumps(recs)
    out.non_tensor_batch["score"] = np.array([0.25, 0.0, 1.0], dtype=object)
    assert [r["score"] for r in trajectory_records(out)] == [0.25, 0.0, 1.0]


def test_split_search_section():
    gen, cur, backend, val, val_mode = split_search_section({
        "mode": "simulate_sft", "topk": 5, "max_turns": 3, "start_threshold": 0.1, "end_threshold": 0.4,
        "val_mode": "local", "val": {"corpus_path": "c.jsonl"}, "ips": ["127.0.0.1"]})
    assert gen == {"max_turns": 3} and cur == {"start_threshold": 0.1, "end_threshold": 0.4}
    assert backend == {"mode": "simulate_sft", "topk": 5, "ips": ["127.0.0.1"]}
    assert val == {"corpus_path": "c.jsonl"} and val_mode == "local"


def test_every_generation_field_is_reachable_from_the_search_section():
    fields = {f.name for f in dataclasses.fields(GenerationConfig)}
    assert fields == set(GENERATION_KEYS) | set(GENERATION_FIELDS_FROM_ELSEWHERE)
    gen, _, backend, _, _ = split_search_section({"mode": "local", "action_format": "tool_call"})
    assert gen == {"action_format": "tool_call"} and backend == {"mode": "local"}


def test_prefilled_tag_only_in_the_assistant_turn(tokenizer):
    manager = LockstepRollout(tokenizer, backend=None, cfg=GenerationConfig())
    quoted = [{"role": "user", "content": "Search with <search>"}]
    base = tokenizer.apply_chat_template(quoted, tokenize=False, add_generation_prompt=True)
    prompts = [base, base + "<search> Ann", base + "<answer>"]
    ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    batch = DataProto.from_dict(non_tensors={"prompt_ids": ids, "question": ["q"] * 3})
    assert [r.carry for r in manager._init_rows(batch)] == ["", "<search> Ann", "<answer>"]
    with pytest.raises(ValueError, match="max_prompt_length"):
        LockstepRollout(tokenizer, None, GenerationConfig(max_prompt_length=8))._init_rows(batch)
    with pytest.raises(ValueError, match="question"):
        manager._init_rows(DataProto.from_dict(non_tensors={"prompt_ids": ids}))


@pytest.mark.parametrize("observation_format,role", [("chat", "user"), ("chat", "tool"), ("inline", "user")])
def test_strict_format_reads_the_policys_text_around_chat_observations(tokenizer, observation_format, role):
    """With chat observations the decoded response holds the template's role words (`user`, `tool`, `assistant`)
    between blocks; `format_text` leaves them out, so `reward.strict_format` passes a well-formed answer."""
    from zerosearch.reward_fn import make_reward_fn

    cfg = GenerationConfig(observation_format=observation_format, observation_role=role, max_obs_length=200)
    rollout = LockstepRollout(tokenizer, backend=None, cfg=cfg)
    r = ObservationRenderer(tokenizer, cfg)
    row = Trajectory(index=0, prompt=[1], question="q", golden_answers=["Paris"])
    row.append(r.encode("<think>look it up</think>\n<search>capital of France</search>"), 1)
    row.append(r.observation("Doc 1(Title: France) Paris is the capital.", limit=1000), 0)
    row.append(r.encode("<think>found</think>\n<answer>Paris</answer>"), 1)
    row.append(r.corrective(), 0)  # a corrective message is reduced to nothing
    response = tokenizer.decode(row.ids, skip_special_tokens=True)
    fmt = rollout._format_text(row)
    assert fmt == ("<think>look it up</think>\n<search>capital of France</search><information>Doc 1(Title: France) "
                   "Paris is the capital.</information><think>found</think>\n<answer>Paris</answer>")
    strict = make_reward_fn(SimpleNamespace(reward={"strict_format": True}))
    batch = DataProto.from_dict(non_tensors={"response_text": [response] * 2, "format_text": [fmt, response],
                                             "golden_answers": [["Paris"]] * 2, "data_source": ["nq"] * 2})
    scores, per = strict(batch)
    assert per[0]["format_ok"] == 1.0 and per[0]["em"] == 1.0 and per[0]["answer"] == "Paris"
    # the whole decoded response fails the strict check (its role words with chat observations, the corrective
    # message in both formats), and its last <answer> is the corrective message's example, not the policy's
    assert per[1]["format_ok"] == 0.0 and per[1]["answer"] == "answer"


def test_rollout_stats_count_tokens_and_speculative_drafts():
    from verl.workers.rollout.base import GenOutput
    from zerosearch.rollout.base import RolloutStats

    stats = RolloutStats()
    stats.count(GenOutput(token_ids=[1, 2, 3]))
    assert "rollout/spec_acceptance_rate" not in stats.metrics([])  # speculative decoding off: no such metric
    stats.count(GenOutput(token_ids=[4] * 10, spec_drafted=8, spec_accepted=6))
    stats.count(GenOutput(token_ids=[5] * 4, spec_drafted=4, spec_accepted=0))
    m = stats.metrics([])
    assert m["rollout/generated_tokens"] == 17
    assert m["rollout/spec_acceptance_rate"] == pytest.approx(6 / 12)
    assert m["rollout/spec_accepted_tokens"] == 6
