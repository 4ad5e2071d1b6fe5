"""The multi-turn search rollout on the embedded model (real HF engine) and the real local BM25 backend.

Searches are forced with a prompt whose assistant turn already opens `<search>` and holds a query (greedy
decoding then closes the tag); every row's masked response spans are decoded and checked token by token.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from verl.protocol import DataProto
from verl.workers.rollout import SamplingParams
from zerosearch.data.prompts import build_prompt
from zerosearch.rollout import GenerationConfig, LockstepRollout, register_rollout_mode, trajectory_records

pytestmark = pytest.mark.slow
GREEDY = SamplingParams(temperature=0.0, max_tokens=1000, seed=0)


class RecordingBackend:
    """Wraps the real local backend and keeps a copy of every request batch it receives."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.calls = inner, inner.name, []

    def search(self, requests, topk):
        self.calls.append([dataclasses.replace(r, golden_answers=list(r.golden_answers)) for r in requests])
        return self.inner.search(requests, topk)

    def pop_metrics(self):
        return self.inner.pop_metrics()

    def close(self):
        self.inner.close()


def search_prefill(question: str) -> str:
    return "<search> " + question.rstrip("?") + "."


def make_batch(tokenizer, rows, messages_fn=build_prompt) -> DataProto:
    """rows: (question, golden answers, text appended after the assistant generation prompt)."""
    ids = [tokenizer.encode(tokenizer.apply_chat_template(messages_fn(q), tokenize=False, add_generation_prompt=True)
                            + prefill, add_special_tokens=False) for q, _, prefill in rows]
    return DataProto.from_dict(non_tensors={"prompt_ids": ids, "question": [q for q, _, _ in rows],
                                            "golden_answers": [g for _, g, _ in rows]})


def response_of(out: DataProto, i: int) -> tuple[list[int], list[int]]:
    """Row i's real response tokens and their response_mask."""
    prompt_width = out.batch["prompts"].shape[1]
    n = int(out.batch["attention_mask"][i, prompt_width:].sum())
    return out.batch["responses"][i, :n].tolist(), out.batch["response_mask"][i, :n].tolist()


def masked_spans(ids: list[int], mask: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for j, m in enumerate(mask + [1]):
        if m == 0 and start is None:
            start = j
        elif m == 1 and start is not None:
            spans.append((start, j))
            start = None
    return spans


def check_batch_layout(out: DataProto, tokenizer, max_response_length: int) -> None:
    b = out.batch
    assert b["responses"].shape[1] == max_response_length
    assert b["input_ids"].tolist() == [p + r for p, r in zip(b["prompts"].tolist(), b["responses"].tolist())]
    prompt_width = b["prompts"].shape[1]
    assert b["info_mask"][:, prompt_width:].tolist() == b["response_mask"].tolist()
    for i in range(len(out)):
        ids, mask = response_of(out, i)
        assert len(ids) <= max_response_length
        assert b["response_mask"][i, len(ids):].sum() == 0  # padding is masked
        assert out.non_tensor_batch["response_text"][i] == tokenizer.decode(ids, skip_special_tokens=True)


@pytest.fixture(scope="module")
def inline_run(engine, tokenizer, local_backend, questions):
    # Row 0 answers at once, so the searching rows are not a prefix of the batch: a request built from the
    # position among searching rows (the original's bug) would carry another row's question.
    rows = [(questions[0][0], questions[0][1], "<answer>")] + [(q, g, search_prefill(q)) for q, g in questions[1:3]]
    batch = make_batch(tokenizer, rows)
    backend = RecordingBackend(local_backend)
    cfg = GenerationConfig(max_turns=2, max_prompt_length=400, max_response_length=96, max_obs_length=48, topk=2)
    rollout = LockstepRollout(tokenizer, backend, cfg, noise_schedule=lambda step: 0.1 * step)
    return batch, rollout(batch, engine, GREEDY, step=3), backend, cfg


def test_inline_search_inserts_masked_information(inline_run, tokenizer):
    batch, out, _, cfg = inline_run
    check_batch_layout(out, tokenizer, cfg.max_response_length)
    nt = out.non_tensor_batch
    assert list(nt["question"]) == list(batch.non_tensor_batch["question"])  # row order preserved
    assert nt["stop_reason"][0] == "answer" and nt["finished"][0] and nt["num_searches"][0] == 0
    assert all(n >= 1 for n in nt["num_searches"][1:]), f"a prefilled <search> was not closed: {nt['response_text']}"
    for i in range(len(out)):
        ids, mask = response_of(out, i)
        observations = 0
        for start, end in masked_spans(ids, mask):
            text = tokenizer.decode(ids[start:end])
            if text.startswith("\n\n<information>"):
                observations += 1
                assert text.startswith("\n\n<information>Doc 1(Title: ") and text.endswith("</information>\n\n")
                assert end - start <= cfg.max_obs_length
                assert tokenizer.decode(ids[:start]).endswith("</search>")  # policy tokens before it: mask 1
            else:
                assert text == "\n" + cfg.invalid_action_message + "\n"
        assert observations == nt["num_searches"][i] == len(nt["search_queries"][i])
        assert nt["num_searches"][i] <= cfg.max_turns and nt["num_turns"][i] <= cfg.max_turns + 1
        if nt["num_searches"][i]:
            assert "<information>Doc 1(Title: " in nt["response_text"][i]


def test_each_request_carries_its_own_rows_question(inline_run):
    _, out, backend, _ = inline_run
    nt = out.non_tensor_batch
    sent = Counter((r.query, r.question, tuple(r.golden_answers)) for call in backend.calls for r in call)
    expected = Counter((q, nt["question"][i], tuple(nt["golden_answers"][i]))
                       for i in range(len(out)) for q in nt["search_queries"][i])
    assert sent == expected and sum(sent.values()) >= 2
    assert all(r.noise_p == pytest.approx(0.3) for call in backend.calls for r in call)
    assert len(backend.calls) <= 2  # one batched call per search turn


def test_metrics_and_records(inline_run):
    _, out, _, _ = inline_run
    m = out.meta_info["metrics"]
    for key in ("env/number_of_actions/mean", "env/number_of_actions/max", "env/number_of_actions/min",
                "env/finish_ratio", "env/number_of_valid_action", "env/ratio_of_valid_action",
                "env/number_of_valid_search", "env/turns_mean"):
        assert key in m
    assert m["search/noise_p"] == pytest.approx(0.3)
    assert any(k.startswith("search/") and k != "search/noise_p" for k in m)  # the backend's own metrics
    assert m["env/number_of_valid_search"] == pytest.approx(sum(out.non_tensor_batch["num_searches"]) / len(out))
    recs = trajectory_records(out, 2)
    assert len(recs) == 2 and recs[1]["response_text"] == out.non_tensor_batch["response_text"][1]
    assert recs[1]["golden_answers"] == list(out.non_tensor_batch["golden_answers"][1]) and recs[1]["score"] is None


class RecordingEngine:
    """Wraps the real HF engine and keeps every call's sampling params and outputs."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    def generate(self, prompts, params):
        outs = self.inner.generate(prompts, params)
        self.calls.append((params, outs))
        return outs


def test_each_row_generates_within_its_own_budget(engine, tokenizer, local_backend, questions):
    # row 0 answers at once (a short first turn), the others search: by the second turn the rows have different
    # budgets left, and each request is capped at its own, so no generated token is cut away afterwards
    rows = [(questions[0][0], questions[0][1], "<answer>")] + [(q, g, search_prefill(q)) for q, g in questions[6:9]]
    recording = RecordingEngine(engine)
    cfg = GenerationConfig(max_turns=2, max_prompt_length=400, max_response_length=72, max_obs_length=40, topk=2)
    out = LockstepRollout(tokenizer, local_backend, cfg)(make_batch(tokenizer, rows), recording, GREEDY)
    check_batch_layout(out, tokenizer, 72)
    caps_seen = set()
    for params, outs in recording.calls:
        assert params.max_tokens_per_prompt is not None and len(params.max_tokens_per_prompt) == len(outs)
        assert params.max_tokens == max(params.max_tokens_per_prompt)
        caps_seen.update(params.max_tokens_per_prompt)
        assert all(len(o.token_ids) <= cap for o, cap in zip(outs, params.max_tokens_per_prompt))
    assert len(caps_seen) > 1  # the rows really had different budgets
    generated = sum(len(o.token_ids) for _, outs in recording.calls for o in outs)
    kept = sum(sum(response_of(out, i)[1]) for i in range(len(out)))  # policy tokens (mask 1) in the responses
    assert generated == kept  # nothing generated past a row's budget


def test_final_turn_never_searches(engine, tokenizer, local_backend, questions):
    q, g = questions[1]
    backend = RecordingBackend(local_backend)
    cfg = GenerationConfig(max_turns=0, max_prompt_length=400, max_response_length=12, max_obs_length=48)
    out = LockstepRollout(tokenizer, backend, cfg)(make_batch(tokenizer, [(q, g, search_prefill(q))]), engine,
                                                                   GREEDY)
    ids, mask = response_of(out, 0)
    text = out.non_tensor_batch["response_text"][0]
    assert "</search>" in text and not text.endswith("</search>")  # the final turn does not stop at </search>
    assert backend.calls == [] and out.non_tensor_batch["num_searches"][0] == 0
    assert mask == [1] * len(ids) and out.non_tensor_batch["num_turns"][0] == 1


def test_max_turns_and_response_budget(engine, tokenizer, local_backend, questions):
    rows = [(q, g, search_prefill(q)) for q, g in questions[4:6]]
    backend = RecordingBackend(local_backend)
    cfg = GenerationConfig(max_turns=1, max_prompt_length=400, max_response_length=40, max_obs_length=200, topk=2)
    out = LockstepRollout(tokenizer, backend, cfg)(make_batch(tokenizer, rows), engine, GREEDY)
    check_batch_layout(out, tokenizer, 40)
    assert len(backend.calls) <= 1
    assert list(out.non_tensor_batch["num_searches"]) == [1, 1], out.non_tensor_batch["response_text"]
    for i in range(len(out)):
        ids, mask = response_of(out, i)
        # the documents were cut so the observation fills the budget exactly; nothing is generated after it
        assert len(ids) == 40 and out.non_tensor_batch["stop_reason"][i] == "length"
        (start, end), = masked_spans(ids, mask)
        assert end == 40 and tokenizer.decode(ids[start:end]).endswith("</information>\n\n")


def test_chat_observation_format(engine, tokenizer, local_backend, questions):
    rows = [(q, g, search_prefill(q)) for q, g in questions[1:3]]
    cfg = GenerationConfig(max_turns=1, max_prompt_length=400, max_response_length=64, max_obs_length=56,
                           observation_format="chat", final_turn="none")
    out = LockstepRollout(tokenizer, local_backend, cfg)(make_batch(tokenizer, rows), engine, GREEDY)
    searched = [i for i in range(len(out)) if out.non_tensor_batch["num_searches"][i]]
    assert searched
    for i in searched:
        ids, mask = response_of(out, i)
        (start, end), = masked_spans(ids, mask)
        text = tokenizer.decode(ids[start:end])
        assert text.startswith("<|im_end|>\n<|im_start|>user\n<information>Doc 1(Title: ")
        assert text.endswith("</information><|im_end|>\n<|im_start|>assistant\n")
        assert tokenizer.decode(ids[:start]).endswith("</search>")
        # what the reward reads for the answer and the format: the role words are left out
        fmt, policy = out.non_tensor_batch["format_text"][i], tokenizer.decode(ids[:start], skip_special_tokens=True)
        assert fmt.startswith(policy + "<information>Doc 1(Title: ") and "\nuser\n" not in fmt[len(policy):]


def _plain_question(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


@pytest.mark.parametrize("on_eos", ["correct", "finish"])
def test_eos_without_action(engine, tokenizer, local_backend, on_eos):
    backend = RecordingBackend(local_backend)
    cfg = GenerationConfig(max_turns=1, max_prompt_length=400, max_response_length=64, max_obs_length=48,
                           final_turn="none", on_eos_without_action=on_eos)
    batch = make_batch(tokenizer, [("Reply with one word: yes or no?", ["yes"], "")], messages_fn=_plain_question)
    out = LockstepRollout(tokenizer, backend, cfg)(batch, engine, GREEDY)
    ids, mask = response_of(out, 0)
    nt = out.non_tensor_batch
    assert backend.calls == [] and nt["valid_actions"][0] == 0
    if on_eos == "finish":
        assert nt["stop_reason"][0] == "eos" and mask == [1] * len(ids)
        return
    (start, end), = masked_spans(ids, mask)
    assert end == len(ids) and tokenizer.decode(ids[start:end]) == "\n" + cfg.invalid_action_message + "\n"
    assert ids[start - 1] == tokenizer.eos_token_id  # the policy's own EOS stays a policy token
    assert cfg.invalid_action_message in nt["response_text"][0] and nt["stop_reason"][0] == "max_turns"


def test_make_rollout_fn_curriculum_and_validation_backend(engine, tokenizer, world_dir, local_backend, questions,
                                                            tmp_path):
    from verl.trainer.config import PPOConfig
    from zerosearch.rollout import make_rollout_fn

    cfg = PPOConfig()
    cfg.data.max_prompt_length, cfg.data.max_response_length, cfg.data.max_obs_length = 400, 24, 48
    cfg.search = {"mode": "simulate_prompt", "topk": 2, "max_turns": 1, "schedule": "linear",
                  "start_threshold": 0.2, "end_threshold": 0.6, "total_steps": 10,
                  "corpus_path": str(world_dir / "corpus.jsonl"), "index_dir": str(tmp_path), "val": {"topk": 1}}
    # the simulator needs a server: inject the training backend, the validation one (local BM25) is built
    train_backend = RecordingBackend(local_backend)
    rollout = make_rollout_fn(cfg, tokenizer, backend=train_backend)
    q, g = questions[1]
    batch = make_batch(tokenizer, [(q, g, search_prefill(q))])
    train = rollout(batch, engine, GREEDY, 5, False)
    assert [r.noise_p for call in train_backend.calls for r in call] == [pytest.approx(0.4)]
    assert train.meta_info["metrics"]["search/noise_p"] == pytest.approx(0.4)
    val = rollout(batch, engine, GREEDY, 5, True)
    val_manager = rollout.managers[True]
    assert val_manager.backend.name == "local" and val_manager.backend is not local_backend
    assert val_manager.cfg.topk == 1 and val.meta_info["metrics"]["search/noise_p"] == 0.0
    for out in (train, val):
        assert out.non_tensor_batch["num_searches"][0] == 1 and out.batch["responses"].shape[1] == 24
        assert "<information>Doc 1(Title: " in out.non_tensor_batch["response_text"][0]
    assert len(train_backend.calls) == 1  # validation never touched the training backend
    rollout.close()
    with pytest.raises(ValueError, match=r"search\.max_turn\b"):
        make_rollout_fn(dataclasses.replace(cfg, search={"mode": "local", "max_turn": 1}), tokenizer)


@register_rollout_mode("test_reversed")
class ReversedLockstep(LockstepRollout):
    """A new rollout mode is one registered class (here: the lockstep loop over the rows in reverse order)."""

    def _play(self, rows, engine, params, noise_p, stats):
        self.played = [row.index for row in rows[::-1]]
        super()._play(rows[::-1], engine, params, noise_p, stats)


def test_a_new_rollout_mode_is_one_registered_class(engine, tokenizer, local_backend, questions):
    from verl.trainer.config import PPOConfig
    from zerosearch.rollout import make_rollout_fn

    cfg = PPOConfig()
    cfg.data.max_prompt_length, cfg.data.max_response_length, cfg.data.max_obs_length = 400, 24, 48
    cfg.actor_rollout_ref.rollout.mode = "test_reversed"
    cfg.search = {"mode": "local", "topk": 2, "max_turns": 1}
    rollout = make_rollout_fn(cfg, tokenizer, backend=RecordingBackend(local_backend), val_backend=local_backend)
    rows = [(q, g, search_prefill(q)) for q, g in questions[:2]]
    out = rollout(make_batch(tokenizer, rows), engine, GREEDY, 0, False)
    manager = rollout.managers[False]
    assert isinstance(manager, ReversedLockstep) and manager.played == [1, 0]
    assert list(out.non_tensor_batch["question"]) == [q for q, _, _ in rows]  # row order kept
    assert list(out.non_tensor_batch["num_searches"]) == [1, 1]
    cfg.actor_rollout_ref.rollout.mode = "no_such_mode"
    with pytest.raises(ValueError, match=r"rollout\.mode='no_such_mode'.*valid: \[.*'async'.*'sync'"):
        make_rollout_fn(cfg, tokenizer, backend=local_backend)
