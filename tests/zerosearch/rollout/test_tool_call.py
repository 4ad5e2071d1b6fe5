"""The tool-call action format: the policy calls a `search` tool and the documents come back as a `tool` turn.

Two chat templates: the embedded model's own (SmolLM2, ChatML; it ignores `tools=`, so the prompt's instruction
spells the call out) and a Qwen2.5-style template written here (tools listed in the system turn inside
`<tools></tools>`, tool results as `<tool_response>` inside a user turn), set on a copy of the embedded tokenizer.
Rollouts run the real HF engine on the embedded model against the real local BM25 engine; a search is forced by a
prompt whose assistant turn already opens the call and holds the query (greedy decoding closes it).
"""

from __future__ import annotations

import json

import pytest

from verl.protocol import DataProto
from verl.utils.dataset import PromptDataset
from verl.workers.rollout import SamplingParams
from zerosearch.data.prepare import prepare
from zerosearch.data.prompts import TOOL_INSTRUCTION, build_prompt, prompt_tools
from zerosearch.data.schema import check_parquet
from zerosearch.reward import check_format, compute_score
from zerosearch.rollout import GenerationConfig, LockstepRollout
from zerosearch.rollout.actions import SEARCH_TOOL, TOOL_CALL_INVALID_MESSAGE, action_format
from zerosearch.rollout.observation import ObservationRenderer, chat_wrapper

GREEDY = SamplingParams(temperature=0.0, max_tokens=1000, seed=0)
TOOLS = [SEARCH_TOOL]
CALL_OPEN = '<tool_call>{"name": "search", "arguments": {"query": "'

QWEN25_STYLE_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content }}{%- else %}{{- 'You are a helpful assistant.' }}"
    "{%- endif %}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided "
    "with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for call in message.tool_calls %}{%- if call.function is defined %}{%- set call = call.function %}"
    "{%- endif %}{{- '\\n<tool_call>\\n{\"name\": \"' + call.name + '\", \"arguments\": ' }}"
    "{{- call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN_HEAD = "<|im_end|>\n<|im_start|>user\n<tool_response>\n"
QWEN_TAIL = "\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
SMOL_HEAD, SMOL_TAIL = "<|im_end|>\n<|im_start|>tool\n", "<|im_end|>\n<|im_start|>assistant\n"


def tool_cfg(**kw) -> GenerationConfig:
    return GenerationConfig(action_format="tool_call", **kw)


@pytest.fixture(scope="module")
def smol(embedded_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_path)


@pytest.fixture(scope="module")
def qwen(embedded_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_path)  # a copy: the embedded one keeps its template
    tok.chat_template = QWEN25_STYLE_TEMPLATE
    return tok


def render(tok, question: str, tools=TOOLS) -> str:
    return tok.apply_chat_template(build_prompt(question, "tool_call"), tools=tools, tokenize=False,
                                   add_generation_prompt=True)


# ----------------------------------------------------------------------------- config, parsing, reward
def test_action_format_sets_the_observation_defaults():
    tags, tool = GenerationConfig(), tool_cfg()
    assert (tags.observation_format, tags.observation_role) == ("inline", "user")
    assert (tool.observation_format, tool.observation_role) == ("chat", "tool")
    assert tool.stop == ["</tool_call>", "</answer>"] and tool.invalid_action_message == TOOL_CALL_INVALID_MESSAGE
    assert "<search>" in tags.invalid_action_message
    assert tool_cfg(observation_role="user").observation_role == "user"  # for templates without a tool role
    refused = r"search\.observation_format must be chat .*search\.action_format=tool_call.*'inline'"
    with pytest.raises(ValueError, match=refused):
        GenerationConfig.from_dict({"action_format": "tool_call", "observation_format": "inline"})
    with pytest.raises(ValueError, match=r"search\.final_stop.*</tool_call>"):
        tool_cfg(final_stop=["</answer>", "</tool_call>"])


def test_tool_call_parse():
    fmt = action_format("tool_call")
    call = '<tool_call>{"name": "search", "arguments": {"query": " Ann born "}}</tool_call>'
    assert fmt.parse("Let me look. " + call) == ("search", "Ann born")
    assert fmt.parse('<tool_call>\n{"name": "search", "arguments": {"query": "x"}}\n</tool_call>') == ("search", "x")
    assert fmt.parse('<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"x\\"}"}</tool_call>') == \
        ("search", "x")  # arguments JSON-encoded once more
    assert fmt.parse(call + " <answer>b</answer>", prefer_answer=True) == ("answer", "b")
    assert fmt.parse("<answer> Paris </answer>") == ("answer", "Paris")
    for bad in ('{"name": "search", "arguments": {"query": "x"}',  # bad JSON
                '{"name": "lookup", "arguments": {"query": "x"}}',  # another tool
                '{"name": "search", "arguments": {"query": "  "}}',  # empty query
                '{"name": "search", "arguments": {"q": "x"}}', '["search"]', "search x"):
        assert fmt.parse(f"<tool_call>{bad}</tool_call>") == (None, ""), bad
    assert fmt.parse("<search> x </search>") == (None, "")  # the tag format is not this one
    assert fmt.open_suffix("assistant\n" + CALL_OPEN + "Ann") == CALL_OPEN + "Ann"
    assert fmt.parse(fmt.open_suffix("...\n" + CALL_OPEN) + 'Ann born"}}</tool_call>') == ("search", "Ann born")


def test_reward_format_accepts_a_tool_call_as_the_search():
    call = '<tool_call>{"name": "search", "arguments": {"query": "q"}}</tool_call>'
    good = f"I look it up. {call}\ntool\n<information>Doc 1(Title: T) x</information>\n<answer> x </answer>"
    res = check_format(good)
    assert res.valid, res.reason
    assert res.blocks == ("tool_call", "information", "answer") and res.n_search == 1
    assert compute_score(good, ["x"])["score"] == 1.0 and compute_score(good, ["x"])["format_ok"] == 1.0
    two = f"{call}<information>a</information><search>b</search><information>c</information><answer>x</answer>"
    assert check_format(two).valid and check_format(two).n_search == 2
    missing = check_format(f"{call}<answer>x</answer>")
    assert not missing.valid and "<tool_call> #1 not followed by an <information>" in missing.reason
    assert not check_format("<information>d</information><answer>x</answer>").valid
    assert "nested" in check_format('<tool_call>{"q": "<answer>x</answer>"}</tool_call>').reason


# ----------------------------------------------------------------------------- templates and data
def test_embedded_template_prompt_and_tool_turn(smol):
    text = render(smol, "Where was Ann born")
    assert TOOL_INSTRUCTION in text and CALL_OPEN[:20] in text  # the instruction spells the call out
    assert chat_wrapper(smol, "tool") == (SMOL_HEAD, SMOL_TAIL)
    r = ObservationRenderer(smol, tool_cfg())
    assert smol.decode(r.observation("Doc 1(Title: T) x", 1000)) == \
        SMOL_HEAD + "<information>Doc 1(Title: T) x</information>" + SMOL_TAIL
    assert smol.decode(r.corrective()) == SMOL_HEAD + TOOL_CALL_INVALID_MESSAGE + SMOL_TAIL


def test_qwen_style_template_prompt_observation_and_parse(qwen):
    text = render(qwen, "Where was Ann born")
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools")
    assert "<tools>\n" + json.dumps(SEARCH_TOOL) + "\n</tools>" in system
    assert text.endswith(f"<|im_start|>user\n{TOOL_INSTRUCTION}\nQuestion: Where was Ann born?<|im_end|>\n"
                         "<|im_start|>assistant\n")
    assert chat_wrapper(qwen, "tool") == (QWEN_HEAD, QWEN_TAIL)
    r = ObservationRenderer(qwen, tool_cfg())
    assert qwen.decode(r.observation("Doc 1(Title: T) x", 1000)) == \
        QWEN_HEAD + "<information>Doc 1(Title: T) x</information>" + QWEN_TAIL
    # what the template itself writes for an assistant's tool call parses as the search
    turn = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "search", "arguments": {"query": "Ann born"}}}]}]
    written = qwen.apply_chat_template(turn, tools=TOOLS, tokenize=False).split("<|im_start|>assistant", 1)[1]
    assert action_format("tool_call").parse(written) == ("search", "Ann born")


def test_dataset_passes_a_rows_tools_to_the_template(qwen, tmp_path):
    (tmp_path / "in" / "popqa").mkdir(parents=True)
    (tmp_path / "in" / "popqa" / "test.jsonl").write_text(json.dumps({"question": "who is it",
                                                                       "golden_answers": ["Someone"]}) + "\n")
    prepare(tmp_path / "out", train_sources=[], test_sources=["popqa"], local_dir=tmp_path / "in", style="tool_call")
    df = check_parquet(tmp_path / "out" / "test.parquet")
    assert json.loads(df.tools[0]) == TOOLS == json.loads(prompt_tools("tool_call"))
    assert prompt_tools("zeroshot") is None
    ds = PromptDataset.from_dataframe(df, qwen, max_prompt_length=1024)
    assert ds.rows[0]["prompt_ids"] == qwen.encode(render(qwen, "who is it"), add_special_tokens=False)
    plain = PromptDataset.from_dataframe(df.drop(columns=["tools"]), qwen, max_prompt_length=1024)
    assert "<tools>" not in qwen.decode(plain.rows[0]["prompt_ids"])
    with pytest.raises(ValueError, match=r"row 0: column 'tools' is not valid JSON"):
        PromptDataset.from_dataframe(df.assign(tools=["[{"]), qwen, max_prompt_length=1024)


# ----------------------------------------------------------------------------- rollouts (real engine and BM25)
def make_batch(tok, rows) -> DataProto:
    """rows: (question, golden answers, text appended after the assistant generation prompt)."""
    ids = [tok.encode(render(tok, q) + prefill, add_special_tokens=False) for q, _, prefill in rows]
    return DataProto.from_dict(non_tensors={"prompt_ids": ids, "question": [q for q, _, _ in rows],
                                            "golden_answers": [g for _, g, _ in rows]})


def spans(out: DataProto, i: int) -> tuple[list[int], list[tuple[int, int, int]]]:
    """Row i's response tokens and its runs (start, end, mask value)."""
    width = out.batch["prompts"].shape[1]
    n = int(out.batch["attention_mask"][i, width:].sum())
    ids, mask = out.batch["responses"][i, :n].tolist(), out.batch["response_mask"][i, :n].tolist()
    runs, start = [], 0
    for j in range(1, n + 1):
        if j == n or mask[j] != mask[start]:
            runs.append((start, j, mask[start]))
            start = j
    return ids, runs


@pytest.mark.slow
def test_rollout_on_the_embedded_template(engine, smol, local_backend, questions):
    (q0, g0), (q1, g1), (q2, g2) = questions[1:4]
    rows = [(q0, g0, CALL_OPEN + q0.rstrip("?")), (q1, g1, CALL_OPEN + q1.rstrip("?")),
            (q2, g2, '<tool_call>{"name": "lookup", "arguments": {"query": "' + q2.rstrip("?"))]
    cfg = tool_cfg(max_turns=1, max_prompt_length=400, max_response_length=96, max_obs_length=56, topk=2)
    out = LockstepRollout(smol, local_backend, cfg)(make_batch(smol, rows), engine, GREEDY)
    nt = out.non_tensor_batch
    assert list(nt["num_searches"]) == [1, 1, 0], nt["response_text"]
    for (query,), q in zip(nt["search_queries"][:2], (q0, q1)):  # the query as the policy wrote (closed) it
        assert query.startswith(q.rstrip("?")) and len(query) <= len(q) + 2
    for i in range(3):
        ids, runs = spans(out, i)
        (s0, e0, m0), (s1, e1, m1) = runs[:2]  # the call's end (policy), then the inserted tool turn
        assert (m0, m1) == (1, 0) and all(m == 1 for _, _, m in runs[2:]) and len(runs) <= 3
        assert smol.decode(ids[s0:e0]).endswith("</tool_call>")
        inserted = smol.decode(ids[s1:e1])
        if i < 2:
            assert inserted.startswith(SMOL_HEAD + "<information>Doc 1(Title: ") and inserted.endswith(
                "</information>" + SMOL_TAIL) and e1 - s1 <= cfg.max_obs_length
        else:  # another tool's name: the corrective message, as the tool's reply
            assert inserted == SMOL_HEAD + TOOL_CALL_INVALID_MESSAGE + SMOL_TAIL
            assert nt["valid_actions"][i] == 0


@pytest.mark.slow
def test_rollout_on_a_qwen_style_template(engine, qwen, local_backend, questions):
    q, g = questions[5]
    cfg = tool_cfg(max_turns=1, max_prompt_length=600, max_response_length=80, max_obs_length=64, topk=2,
                   final_turn="none")
    out = LockstepRollout(qwen, local_backend, cfg)(make_batch(qwen, [(q, g, CALL_OPEN + q.rstrip("?"))]), engine,
                                                    GREEDY)
    assert out.non_tensor_batch["num_searches"][0] == 1, out.non_tensor_batch["response_text"]
    ids, runs = spans(out, 0)
    assert [m for _, _, m in runs] == [1, 0]
    (_, e0, _), (s1, e1, _) = runs
    assert qwen.decode(ids[:e0]).endswith("</tool_call>")
    inserted = qwen.decode(ids[s1:e1])
    assert inserted.startswith(QWEN_HEAD + "<information>Doc 1(Title: ")
    assert inserted.endswith("</information>" + QWEN_TAIL)
