"""Multi-turn search rollout: the policy thinks, searches, reads documents and answers.

`SearchRolloutManager.run` takes a batch of chat-templated prompts (already repeated `rollout.n` times by the
trainer) and plays every trajectory to its end:

    for turn in range(max_turns):                    # search turns
        active rows generate (one engine call; stop at </search> / </answer>, EOS, or the row's budget)
        first action of the new text:
            <search> q </search>  -> one batched backend call per turn; <information> docs appended (mask 0)
            <answer> a </answer>  -> done
            no valid action       -> corrective message appended (mask 0), stays active
                                     (EOS without an action: done, or corrected if on_eos_without_action=correct)
    final turn: still-active rows generate once more with stop only at </answer>; no search is ever run there.

Every trajectory is kept as token ids: observations are tokenised and appended, only the new tokens of a turn
are decoded (to parse the action), and contexts go to the engine as ids, never re-tokenised. The response of a
trajectory (all turns, observations included) never exceeds `max_response_length`: each turn's budget is what
is left, and observations are cut to fit.

Fixes of the original's defects: each search request carries its OWN row's question and gold answers (the
original indexed them by position among the searching rows, so the simulator got the wrong sample's answer
after the first turn); the final turn makes no search call (the original searched and threw the result away);
the engine stops at `</search>` instead of generating to EOS and cutting the text afterwards.

Other departures: by default a turn that ends with EOS and no action ends the trajectory (the original inserted
the corrective message and went on; `on_eos_without_action=correct` restores that); a search with an empty
query is invalid; observations keep their closing `</information>` when cut. A prompt may pre-open a tag
(assistant prefix ending in `<search>`): the first turn's action is parsed from that prefix + the new text.

One engine call per turn; each row's request is capped at its own remaining budget
(`SamplingParams.max_tokens_per_prompt`), so no decode step is spent on tokens past a row's budget (before
this, one cap for the whole call wasted 8-14% of the generated tokens: benchmarks/BENCHMARKS.md). A row that
still returns more than its budget (an engine ignoring the caps) is cut there and ends with reason "length".

Output (row order preserved): the tensors of `build_rollout_batch` (`prompts`, `responses`, `input_ids`,
`attention_mask`, `position_ids`, `response_mask` = 0 on observation / corrective tokens and padding) plus
`info_mask` [B, P+R] (Search-R1's name and shape: attention_mask with inserted tokens zeroed); the input's
non-tensor keys plus `response_text` (response only, observations included, special tokens skipped),
`num_turns`, `num_searches`, `valid_actions`, `finished` (ended with an answer), `stop_reason` (answer | eos |
length | no_answer | max_turns), `search_queries`; `meta_info["metrics"]`: `env/*`, the backend's `search/*`
and `search/noise_p`.

Overlap of search with generation (`overlap_chunks` = C > 1, opt-in): the batch is split into C contiguous
chunks, each played turn by turn on its own; the chunks take turns on the engine in a fixed round-robin order,
and a chunk's searches run in one background thread while the next chunks generate (C = 1, the default: each
turn is generate-all, then search-all, in the calling thread). A chunk waits only for its own searches. The
round-robin order is fixed and the background thread is single, so backend calls happen in a fixed order (a
seeded simulator draws the same noise), and a greedy engine whose output for a row does not depend on the other
rows of its batch gives exactly the synchronous trajectories. What it buys depends on the split between
generation and search time (benchmarks/bench_rollout.py): smaller engine batches cost throughput, and the gain
is at most the shorter of the two. Sampling seeds: chunk c of turn t uses seed*1009 + t + 7919*c.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from verl.protocol import DataProto
from verl.utils import progress
from verl.utils.plain import to_plain
from verl.utils.rollout_batch import build_rollout_batch
from verl.workers.rollout.base import GenOutput, RolloutEngine, SamplingParams
from zerosearch.generation_config import GenerationConfig, open_tag_suffix, parse_action
from zerosearch.generation_observation import ObservationRenderer
from zerosearch.search.base import SearchBackend, SearchRequest, SearchResult, format_docs

logger = logging.getLogger(__name__)

_PROMPT_TAIL_TOKENS = 48  # decoded to find a tag the prompt pre-opens (`... assistant\n<search>`)


@dataclass
class _Trajectory:
    prompt: list[int]
    question: str
    golden_answers: list[str]
    carry: str = ""  # an unclosed <search>/<answer> the prompt ends with, parsed with the first turn
    ids: list[int] = field(default_factory=list)  # response tokens (policy + inserted)
    mask: list[int] = field(default_factory=list)  # 1: policy-generated, 0: inserted by the framework
    turns: int = 0
    valid_actions: int = 0
    searches: int = 0
    queries: list[str] = field(default_factory=list)
    done: bool = False
    finished: bool = False  # ended with an <answer>
    stop_reason: str = ""  # answer | eos | length | no_answer | max_turns

    def append(self, ids: list[int], mask_value: int) -> None:
        self.ids.extend(ids)
        self.mask.extend([mask_value] * len(ids))

    def end(self, reason: str) -> None:
        self.done, self.stop_reason = True, reason
        self.finished = reason == "answer"


def _as_str_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


class SearchRolloutManager:
    """Runs the multi-turn search loop over a `RolloutEngine` and a `SearchBackend`.

    noise_schedule: step -> probability that a simulator returns noisy documents (the curriculum); None: 0.
    The engine may be swapped between calls (`manager.engine = ...`), e.g. by the trainer's rollout function.
    """

    def __init__(
        self,
        engine: RolloutEngine | None,
        tokenizer,
        backend: SearchBackend,
        cfg: GenerationConfig,
        noise_schedule: Callable[[int], float] | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.backend = backend
        self.cfg = cfg
        self.noise_schedule = noise_schedule
        self.renderer = ObservationRenderer(tokenizer, cfg)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither pad_token_id nor eos_token_id; set one")
        self.pad_token_id = int(pad)
        self._special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._reported = 0  # trajectories of the current run() reported to the progress bar

    # ------------------------------------------------------------------ public
    def run(self, batch: DataProto, params: SamplingParams, step: int = 0) -> DataProto:
        """Play every row of `batch` to its end; returns the rollout DataProto (row order preserved)."""
        if self.engine is None:
            raise ValueError("SearchRolloutManager has no engine: pass one or set manager.engine")
        cfg = self.cfg
        max_model_len = getattr(self.engine, "max_model_len", None)
        if max_model_len is not None and cfg.max_prompt_length + cfg.max_response_length > max_model_len:
            raise ValueError(
                f"data.max_prompt_length ({cfg.max_prompt_length}) + data.max_response_length "
                f"({cfg.max_response_length}) exceeds the engine's max_model_len ({max_model_len}); lower them"
            )
        rows = self._init_rows(batch)
        self._reported = 0
        noise_p = float(self.noise_schedule(step)) if self.noise_schedule is not None else 0.0
        n_chunks = min(cfg.overlap_chunks, len(rows))
        if n_chunks <= 1:
            for searching in self._play(rows, params, chunk=0):
                self._report_progress(rows)
                self._apply(searching, self._call_backend(searching, noise_p))
        else:
            bounds = np.linspace(0, len(rows), n_chunks + 1).round().astype(int)
            self._play_overlapped([rows[a:b] for a, b in zip(bounds[:-1], bounds[1:])], params, noise_p)
        for row in rows:
            if not row.done:
                row.end("max_turns")
        self._report_progress(rows)
        return self._to_dataproto(batch, rows, noise_p)

    def _report_progress(self, rows: list[_Trajectory]) -> None:
        """Newly finished trajectories -> the console's progress bar (`verl.utils.progress`; no bar: a no-op)."""
        done = sum(row.done for row in rows)
        progress.advance(done - self._reported)
        self._reported = done

    # ------------------------------------------------------------------ steps
    def _init_rows(self, batch: DataProto) -> list[_Trajectory]:
        nt = batch.non_tensor_batch
        for key in ("prompt_ids", "question"):
            if key not in nt:
                raise ValueError(f"the rollout batch needs non_tensor_batch[{key!r}] (has {sorted(nt)})")
        if len(batch) == 0:
            raise ValueError("the rollout batch is empty")
        golden = nt.get("golden_answers", [None] * len(batch))
        limit = self.cfg.max_prompt_length
        rows = []
        for i, (ids, question, answers) in enumerate(zip(nt["prompt_ids"], nt["question"], golden)):
            ids = [int(t) for t in ids]
            if not ids:
                raise ValueError(f"prompt_ids of row {i} is empty")
            if len(ids) > limit:
                if not self.cfg.truncate_prompt:
                    raise ValueError(f"row {i}: prompt has {len(ids)} tokens > data.max_prompt_length={limit}; "
                                     "raise it, filter long prompts, or set search.truncate_prompt=true")
                ids = ids[-limit:]
            rows.append(_Trajectory(prompt=ids, question=str(question), golden_answers=_as_str_list(answers),
                                    carry=self._prefilled_tag(ids)))
        return rows

    def _prefilled_tag(self, prompt: list[int]) -> str:
        """The unclosed <search>/<answer> the prompt ends with, looking only after its last special token (so a
        tag quoted in a user message never counts)."""
        tail = prompt[-_PROMPT_TAIL_TOKENS:]
        last_special = max((j for j, t in enumerate(tail) if t in self._special_ids), default=-1)
        return open_tag_suffix(self.tokenizer.decode(tail[last_special + 1:], skip_special_tokens=True))

    def _remaining(self, row: _Trajectory) -> int:
        return self.cfg.max_response_length - len(row.ids)

    def _active(self, rows: list[_Trajectory]) -> list[_Trajectory]:
        active = []
        for row in rows:
            if row.done:
                continue
            if self._remaining(row) <= 0:
                row.end("length")
            else:
                active.append(row)
        return active

    def _play(self, rows: list[_Trajectory], params: SamplingParams, chunk: int
              ) -> Iterator[list[tuple[_Trajectory, str]]]:
        """Play `rows` turn by turn. After each search turn it yields the (row, query) pairs to search; the
        caller must have appended their observations (`_apply`) before it resumes the generator."""
        cfg = self.cfg
        for turn in range(cfg.max_turns):
            active = self._active(rows)
            if not active:
                return
            outputs = self._generate(active, params, cfg.stop, turn, chunk)
            yield [(row, query) for row, out in zip(active, outputs)
                   if (query := self._consume(row, out, final=False)) is not None]
        if cfg.final_turn == "answer":
            active = self._active(rows)
            if active:
                outputs = self._generate(active, params, cfg.final_stop, cfg.max_turns, chunk)
                for row, out in zip(active, outputs):
                    self._consume(row, out, final=True)

    def _play_overlapped(self, chunks: list[list[_Trajectory]], params: SamplingParams, noise_p: float) -> None:
        """Round-robin over the chunks: a chunk waits for its own previous searches, generates its next turn,
        and hands that turn's searches to the (single) background search thread."""
        players = [self._play(rows, params, chunk=c) for c, rows in enumerate(chunks)]
        pending: list[tuple[list[tuple[_Trajectory, str]], Future] | None] = [None] * len(players)
        live = list(range(len(players)))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="zs-search") as pool:
            while live:
                for c in list(live):
                    if pending[c] is not None:
                        searching, future = pending[c]
                        pending[c] = None
                        self._apply(searching, future.result())
                    searching = next(players[c], None)
                    self._report_progress([row for chunk in chunks for row in chunk])
                    if searching is None:
                        live.remove(c)
                    elif searching:
                        pending[c] = (searching, pool.submit(self._call_backend, searching, noise_p))

    def _generate(self, active: list[_Trajectory], params: SamplingParams, stop: list[str],
                  turn: int, chunk: int = 0) -> list[GenOutput]:
        seed = None if params.seed is None else (int(params.seed) * 1009 + turn + 7919 * chunk) % (2**63)
        budgets = [self._remaining(r) for r in active]
        turn_params = dataclasses.replace(params, n=1, stop=list(stop), logprobs=False, seed=seed,
                                          max_tokens=max(budgets), max_tokens_per_prompt=budgets)
        outputs = self.engine.generate([row.prompt + row.ids for row in active], turn_params)
        if len(outputs) != len(active):
            raise RuntimeError(f"the rollout engine returned {len(outputs)} outputs for {len(active)} prompts")
        return outputs

    def _consume(self, row: _Trajectory, out: GenOutput, final: bool) -> str | None:
        """Append one turn's tokens and act on them; returns the query to search, if any."""
        budget = self._remaining(row)
        new = list(out.token_ids)
        cut = len(new) > budget
        if cut:
            new = new[:budget]
        row.append(new, 1)
        row.turns += 1
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        kind, content = parse_action(row.carry + text, prefer_answer=final)
        row.carry = ""
        hit_length = cut or out.finish_reason == "length"
        if kind == "answer":
            row.valid_actions += 1
            row.end("answer")
        elif final:
            row.end("length" if hit_length else "no_answer")  # a search written here is never executed
        elif kind == "search":
            row.valid_actions += 1
            if self._remaining(row) < self.renderer.min_observation_tokens:
                row.end("length")  # no room left to show the documents: do not call the engine for nothing
                return None
            row.queries.append(content)
            return content
        elif hit_length:
            row.end("length")
        elif out.stop_reason is None and self.cfg.on_eos_without_action == "finish":
            row.end("eos")
        else:
            message = self.renderer.corrective(new[-1] if new else None)
            if len(message) >= self._remaining(row):
                row.end("length")
            else:
                row.append(message, 0)
        return None

    def _call_backend(self, searching: list[tuple[_Trajectory, str]], noise_p: float) -> list[SearchResult]:
        """One batched backend call; request i carries row i's own question and gold answers. Touches no row
        (it may run in the background search thread)."""
        if not searching:
            return []
        requests = [SearchRequest(query=q, question=row.question, golden_answers=list(row.golden_answers),
                                  noise_p=noise_p) for row, q in searching]
        results = self.backend.search(requests, self.cfg.topk)
        if len(results) != len(requests):
            raise RuntimeError(f"search backend {self.backend.name!r} returned {len(results)} results "
                               f"for {len(requests)} requests")
        return results

    def _apply(self, searching: list[tuple[_Trajectory, str]], results: list[SearchResult]) -> None:
        """Append each row's observation (tokenised here, in the calling thread)."""
        for (row, _), result in zip(searching, results):
            obs = self.renderer.observation(format_docs(result), self._remaining(row),
                                            row.ids[-1] if row.ids else None)
            row.append(obs, 0)
            row.searches += 1

    # ------------------------------------------------------------------ output
    def _to_dataproto(self, batch: DataProto, rows: list[_Trajectory], noise_p: float) -> DataProto:
        cfg = self.cfg
        tensors = build_rollout_batch([r.prompt for r in rows], [r.ids for r in rows], [r.mask for r in rows],
                                      self.pad_token_id, cfg.max_prompt_length, cfg.max_response_length)
        # Search-R1's `info_mask` spans prompt + response: attention mask with observation tokens zeroed.
        prompt_width = tensors["prompts"].shape[1]
        info_mask = tensors["attention_mask"].clone()
        info_mask[:, prompt_width:] = tensors["response_mask"]
        tensors["info_mask"] = info_mask
        non_tensors: dict[str, Any] = {k: v for k, v in batch.non_tensor_batch.items()}
        non_tensors.update(
            response_text=self.tokenizer.batch_decode([r.ids for r in rows], skip_special_tokens=True),
            num_turns=[r.turns for r in rows],
            num_searches=[r.searches for r in rows],
            valid_actions=[r.valid_actions for r in rows],
            finished=[r.finished for r in rows],
            stop_reason=[r.stop_reason for r in rows],
            search_queries=[list(r.queries) for r in rows],
        )
        meta = dict(batch.meta_info)
        meta["metrics"] = {**rollout_metrics(rows), "search/noise_p": noise_p, **self.backend.pop_metrics()}
        return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors, meta_info=meta)


def rollout_metrics(rows: Sequence[_Trajectory]) -> dict[str, float]:
    """Search-R1's `env/*` statistics over the trajectories of one batch."""
    turns = np.array([r.turns for r in rows], dtype=np.float64)
    valid = np.array([r.valid_actions for r in rows], dtype=np.float64)
    return {
        "env/number_of_actions/mean": float(turns.mean()),
        "env/number_of_actions/max": float(turns.max()),
        "env/number_of_actions/min": float(turns.min()),
        "env/finish_ratio": float(np.mean([r.finished for r in rows])),
        "env/number_of_valid_action": float(valid.mean()),
        "env/ratio_of_valid_action": float(np.mean(valid / np.maximum(turns, 1.0))),
        "env/number_of_valid_search": float(np.mean([r.searches for r in rows])),
        "env/turns_mean": float(turns.mean()),
    }


def trajectory_records(batch_out: DataProto, k: int | None = None) -> list[dict[str, Any]]:
    """The first `k` rows (all if None) as JSON-ready dicts for JSONL files or wandb tables.

    The score is `non_tensor_batch["score"]` if the reward has run, else the sum of `token_level_scores`,
    else None.
    """
    nt = batch_out.non_tensor_batch
    n = len(batch_out) if k is None else max(0, min(int(k), len(batch_out)))
    scores: list[Any] = [None] * n
    if "score" in nt:
        scores = [float(s) for s in nt["score"][:n]]
    elif "token_level_scores" in batch_out.batch:
        scores = batch_out.batch["token_level_scores"][:n].sum(-1).tolist()
    keys = ("data_source", "question", "golden_answers", "response_text", "num_turns", "num_searches",
            "search_queries", "finished", "stop_reason")
    records = []
    for i in range(n):
        rec = {key: to_plain(nt[key][i]) for key in keys if key in nt}
        rec["score"] = scores[i]
        records.append(rec)
    return records


def make_rollout_fn(config, tokenizer, **kwargs) -> Callable[..., DataProto]:
    """The trainer's rollout factory (`rollout_fn.target=zerosearch.generation:make_rollout_fn`)."""
    from zerosearch.generation_factory import make_search_rollout_fn

    return make_search_rollout_fn(config, tokenizer, **kwargs)


__all__ = ["GenerationConfig", "SearchRolloutManager", "make_rollout_fn", "rollout_metrics", "trajectory_records"]
