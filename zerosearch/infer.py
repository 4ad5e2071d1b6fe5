"""Ask a model one question (or several) and watch it search, turn by turn.

    python -m zerosearch.infer "Where was Grikorn Shivis born?" [--gold Baeketar] [KEY VALUE]... [a.b=c]...
    printf 'question one\\nquestion two\\tgold a|gold b\\n' | python -m zerosearch.infer [--json] [KEY VALUE]...

Same model, engine and search keys as `zerosearch.eval` (`MODEL_PATH`, `SEARCH_ENGINE`, `MAX_TURNS`, `TOPK`, ...),
and the same code: the trainer's multi-turn search rollout and reward through `verl.trainer.ppo.validation`. The
question is put in the prompt layout of the training data (`PROMPT_STYLE`: `oneshot`, the chat demonstration the
embedded model needs, or `zeroshot`, the instruction of ZeroSearch / Search-R1; auto: oneshot below 1B
parameters). Without a question argument, questions are read from stdin, one a line, with optional gold answers
after a tab (`|`-separated).

The trajectory is printed from the rollout's own token masks: each run of policy tokens is the model's text of a
turn, each run of inserted tokens is what the framework put in (the documents of a search, or the corrective
message after an invalid action), so what is shown is exactly what the model saw. `--json` prints one JSON object
per question instead: `turns` ([{"role": "model" | "search" | "note", ...}]), `answer`, `stop_reason`,
`num_searches`, `num_turns` and, with gold answers, `em`, `f1`, `substring`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from verl.utils import console
from zerosearch.eval_setup import (
    COMMON_KEYS,
    EMBEDDED_DATA,
    ROOT,
    UsageError,
    build_setup,
    check_values,
    parse_keys,
    usage,
)
from zerosearch.launch import parse_bool

logger = logging.getLogger("zerosearch.infer")

KEYS: dict[str, tuple[str, str]] = {
    **COMMON_KEYS,
    "PROMPT_STYLE": ("auto", "oneshot | zeroshot (auto: oneshot for models below 1B parameters)"),
    "LOG": ("auto", "log file of engines and libraries (auto: eval/infer.log)"),
}
BATCH = 16  # questions from stdin played together


def read_questions(words: list[str], golds: list[str], stdin) -> list[tuple[str, list[str]]]:
    """(question, gold answers) from the command line, or from stdin: `question[<TAB>gold|gold]` per line."""
    if words:
        return [(" ".join(words), golds)]
    if golds:
        raise UsageError("--gold goes with a question on the command line; on stdin put the gold after a tab")
    out = []
    for line in stdin.read().splitlines():
        if not line.strip():
            continue
        q, _, g = line.partition("\t")
        out.append((q.strip(), [x.strip() for x in g.split("|") if x.strip()]))
    if not out:
        raise UsageError("no question: give one as an argument or one a line on stdin")
    return out


def prompt_style(value: str, model_dir: str) -> str:
    if value != "auto":
        if value not in ("oneshot", "zeroshot"):
            raise UsageError(f"PROMPT_STYLE must be oneshot, zeroshot or auto, got {value!r}")
        return value
    from verl.utils.memory_plan import model_dims

    dims = model_dims(model_dir)
    return "oneshot" if dims is None or dims.params() < 1e9 else "zeroshot"


def question_frame(questions: list[tuple[str, list[str]]], style: str):
    """The questions as rows of the training data's schema."""
    import numpy as np
    import pandas as pd

    from zerosearch.data.prompts import build_prompt, prompt_tools

    try:
        tools = prompt_tools(style)
    except ValueError as e:
        raise UsageError(str(e)) from None
    rows = []
    for i, (q, golds) in enumerate(questions):
        try:
            prompt = build_prompt(q, style)
        except ValueError as e:
            raise UsageError(f"question {i + 1}: {e}") from None
        rows.append({"id": f"infer_{i}", "question": q, "golden_answers": np.array(golds, dtype=object),
                     "data_source": "infer", "prompt": prompt,
                     "reward_model": {"style": "rule", "ground_truth": {"target": np.array(golds, dtype=object)}}})
        if tools is not None:
            rows[-1]["tools"] = tools
    return pd.DataFrame(rows)


def turns_of(played, i: int, tokenizer) -> list[dict]:
    """Row i's response split where the mask changes: model text, and what was inserted (documents or a note)."""
    from verl.utils.plain import to_plain

    resp = played.batch["responses"][i]
    mask = played.batch["response_mask"][i].tolist()
    real = played.batch["attention_mask"][i, -resp.shape[0]:].tolist()
    queries = list(to_plain(played.non_tensor_batch["search_queries"][i]) or [])
    spans: list[tuple[int, list[int]]] = []
    for tok, m, a in zip(resp.tolist(), mask, real):
        if not a:
            continue
        if spans and spans[-1][0] == m:
            spans[-1][1].append(tok)
        else:
            spans.append((m, [tok]))
    turns, q = [], 0
    for m, toks in spans:
        text = tokenizer.decode(toks, skip_special_tokens=True)
        if m:
            turns.append({"role": "model", "text": text.strip("\n")})
        elif "<information>" in text:
            query = queries[q] if q < len(queries) else None
            q += 1
            turns.append({"role": "search", "query": query, "documents": text.strip()})
        else:
            turns.append({"role": "note", "text": text.strip()})
    return turns


def render(result: dict) -> str:
    """The human view of one trajectory."""
    lines = [f"Question: {result['question']}"]
    turn = 0
    for t in result["turns"]:
        if t["role"] == "model":
            turn += 1
            lines += [f"--- turn {turn}: model", t["text"]]
        elif t["role"] == "search":
            lines += [f"--- search: {t['query']!r}", t["documents"]]
        else:
            lines += ["--- note from the framework", t["text"]]
    tail = f"--- answer: {result['answer'] if result['answer'] is not None else '(none)'}"
    if result.get("gold"):
        tail += (f"   gold: {' | '.join(result['gold'])}  EM {result['em']:g}  F1 {result['f1']:.2f}  "
                 f"substring {result['substring']:g}")
    searches = result["num_searches"]
    lines += [tail, f"    stop: {result['stop_reason']}, {searches} search{'es' if searches != 1 else ''}, "
                    f"{result['num_turns']} turns"]
    return "\n".join(lines)


def play(setup, parts, questions: list[tuple[str, list[str]]], style: str):
    """Yield one result dict per question, in order."""
    from verl.trainer.ppo import validation
    from verl.utils.dataset import PromptDataset, prompt_options
    from verl.utils.plain import to_plain

    ds = PromptDataset.from_dataframe(question_frame(questions, style), parts.tokenizer, key="question",
                                      **prompt_options(setup.cfg.data))
    params = validation.val_sampling_params(setup.cfg)
    for start in range(0, len(questions), BATCH):
        idx = list(range(start, min(start + BATCH, len(questions))))
        played, _ = validation.generate(validation.make_batch(ds, idx), parts.rollout_fn, parts.engine, params, 1, 0,
                                        True)
        per_sample = validation.score(played, parts.reward_fn)
        nt = played.non_tensor_batch
        for j, i in enumerate(idx):
            golds = questions[i][1]
            res = {"question": questions[i][0], "turns": turns_of(played, j, parts.tokenizer),
                   "answer": per_sample[j].get("answer"), "stop_reason": to_plain(nt["stop_reason"][j]),
                   "num_searches": int(nt["num_searches"][j]), "num_turns": int(nt["num_turns"][j])}
            if golds:
                res.update({"gold": golds, **{k: float(per_sample[j][k]) for k in ("em", "f1", "substring")}})
            yield res


def main(argv: list[str] | None = None, stdin=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(usage("python -m zerosearch.infer [QUESTION] [--gold G]... [--json]", KEYS))
        return 0
    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    golds, rest, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--gold":
            if i + 1 >= len(argv):
                print("error: --gold needs a value", file=sys.stderr)
                return 2
            golds.append(argv[i + 1])
            i += 2
        else:
            rest.append(argv[i])
            i += 1
    try:
        v, overrides, words = parse_keys(rest, KEYS)
        if any(w.startswith("-") for w in words):
            raise UsageError(f"unknown option {next(w for w in words if w.startswith('-'))!r}")
        check_values(v)
        setup = build_setup(v, overrides, [], ROOT / EMBEDDED_DATA)  # auto: BM25 over the embedded world
        style = prompt_style(v["PROMPT_STYLE"], setup.model_dir)
        questions = read_questions(words, golds, stdin or sys.stdin)
    except UsageError as e:
        print(f"error: {e}\n\n{usage('python -m zerosearch.infer [QUESTION]', KEYS)}", file=sys.stderr)
        return 2
    log = Path(v["LOG"]) if v["LOG"] != "auto" else ROOT / "eval" / "infer.log"
    out, err = console.setup_command_logging(log, v["LOG_LEVEL"], parse_bool(v["VERBOSE"], "VERBOSE"))
    from verl.utils import reaper

    reaper.guard()
    from zerosearch.eval_memory import check_memory
    from zerosearch.eval_setup import build_parts

    try:
        check_memory(setup, BATCH)
        console.console_write(f"infer: loading {setup.model_kind} ({setup.cfg.actor_rollout_ref.rollout.name} "
                              f"engine, {setup.engine} search); engine output goes to {log}", err)
        from zerosearch.eval_setup import training_mismatches

        for m in training_mismatches(setup):
            console.console_write(f"warning: this checkpoint's run trained with other rollout settings: {m}", err)
        parts = build_parts(setup, log.with_name("infer_simulation_server.log"))
        try:
            for k, res in enumerate(play(setup, parts, questions, style)):
                if as_json:
                    print(json.dumps(res, ensure_ascii=False), file=out, flush=True)
                else:
                    print(("\n" if k else "") + render(res), file=out, flush=True)
        finally:
            parts.close()
    except UsageError as e:
        console.console_write(f"error: {e}", err)
        return 2
    except KeyboardInterrupt as e:
        return reaper.exit_code(e)
    except Exception as e:  # noqa: BLE001 - one line on the console, the traceback in the log
        logger.error("infer failed", exc_info=True, extra=console.FILE_ONLY)
        console.console_write(f"infer failed: {type(e).__name__}: {e}; details in {log}", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
