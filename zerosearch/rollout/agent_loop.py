"""The asynchronous agent loop (`actor_rollout_ref.rollout.mode=async`): every trajectory at its own pace.

Each trajectory is one asyncio task:

    for turn in range(max_turns):
        generate (one engine request: this row's context, its own budget and stop strings)
        act on the turn (base.py: SearchRollout._consume, the lockstep loop's rules)
        search: the request goes out at once; the documents are appended when they come back
    final turn: one more request with stop only at </answer>; no search there.

No trajectory waits for another: while one row reads its documents, the engine decodes the others, and a long
answer no longer holds a whole turn back (the lockstep loop waits for the longest row and the slowest search
every turn). This is what verl's agent loop, VerlTool and ROLL do; our measured speed-up is in BENCHMARKS.md.

Searches: at most `search.max_concurrent_searches` backend calls in flight (each in a worker thread; backends are
thread-safe); requests that arrive in the same event-loop tick, or while every slot is busy, go together in the
next call, so batch-friendly backends (local BM25, the retriever server, the simulator's pooled client) still get
batches.

Results do not depend on scheduling: a row's turns use `turn_seed(seed, row, turn)` and its search requests
`search_seed(seed, row, turn)` (base.py), and every request carries only its own row's state. With a greedy engine
whose output for a row does not depend on what else it is decoding, this loop gives the lockstep loop's
trajectories token for token (tests/zerosearch/rollout/test_agent_loop.py).

The engine: anything with `async agenerate(prompt, params, key) -> GenOutput` (key: the row, for engines that
spread requests) and `asynchronous = True` (vLLM's
AsyncLLM in-process, `verl.workers.rollout.vllm_async_rollout`; or the trainer's worker group, which sends each
request to rank `row % world_size`); `prepare_rollout()`, when the engine has it, runs first (stale weights are
refreshed there, on every rank at once).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from verl.workers.rollout.base import GenOutput, RolloutEngine, SamplingParams
from zerosearch.rollout.base import RolloutStats, SearchRollout, Trajectory, register_rollout_mode, turn_seed
from zerosearch.search.base import SearchRequest, SearchResult


class _SearchBatcher:
    """Bounded, batching search dispatch on one event loop."""

    def __init__(self, rollout: SearchRollout, limit: int, stats: RolloutStats) -> None:
        self.rollout, self.stats = rollout, stats
        self.free = limit
        self.queue: list[tuple[SearchRequest, asyncio.Future]] = []
        self.pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="zs-search")
        self.loop = asyncio.get_running_loop()
        self._scheduled = False

    async def search(self, request: SearchRequest) -> SearchResult:
        future = self.loop.create_future()
        self.queue.append((request, future))
        if not self._scheduled:  # dispatch after this tick: requests arriving together share a call
            self._scheduled = True
            self.loop.call_soon(self._dispatch)
        return await future

    def _dispatch(self) -> None:
        self._scheduled = False
        while self.free > 0 and self.queue:
            batch, self.queue = self.queue, []
            self.free -= 1
            start = time.perf_counter()
            call = self.loop.run_in_executor(self.pool, self.rollout._search, [req for req, _ in batch])
            call.add_done_callback(lambda done, batch=batch, start=start: self._done(done, batch, start))

    def _done(self, call: asyncio.Future, batch: list[tuple[SearchRequest, asyncio.Future]], start: float) -> None:
        self.free += 1
        elapsed = time.perf_counter() - start
        error = call.exception()
        for i, (_, future) in enumerate(batch):
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                result = call.result()[i]
                future.set_result(result)
        if error is None:
            self.stats.search_latency_s.extend([elapsed] * len(batch))
        self._dispatch()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@register_rollout_mode("async")
class AgentLoopRollout(SearchRollout):
    """Per-trajectory asynchronous rollout over an engine with single requests (`agenerate`)."""

    def _play(self, rows: list[Trajectory], engine: RolloutEngine, params: SamplingParams, noise_p: float,
              stats: RolloutStats) -> None:
        if not getattr(engine, "asynchronous", False) or not hasattr(engine, "agenerate"):
            raise ValueError(f"actor_rollout_ref.rollout.mode=async needs an engine that takes single requests "
                             f"(vLLM's AsyncLLM: rollout.name=vllm); {type(engine).__name__} takes batches only: "
                             "set rollout.mode=sync")
        prepare = getattr(engine, "prepare_rollout", None)
        if prepare is not None:
            prepare()
        asyncio.run(self._play_all(rows, engine, params, noise_p, stats))

    async def _play_all(self, rows: list[Trajectory], engine, params: SamplingParams, noise_p: float,
                        stats: RolloutStats) -> None:
        searcher = _SearchBatcher(self, self.cfg.max_concurrent_searches, stats)
        try:
            tasks = [asyncio.ensure_future(self._trajectory(row, rows, engine, params, noise_p, stats, searcher))
                     for row in rows]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            searcher.close()

    async def _trajectory(self, row: Trajectory, rows: list[Trajectory], engine, params: SamplingParams,
                          noise_p: float, stats: RolloutStats, searcher: _SearchBatcher) -> None:
        cfg = self.cfg
        for turn in range(cfg.max_turns):
            if not self._can_continue(row):
                break
            out = await self._generate(engine, row, params, turn, False, stats)
            query = self._consume(row, out, final=False)
            if query is not None:
                start = time.perf_counter()
                result = await searcher.search(self._request(row, query, noise_p, params.seed, turn))
                row.busy_s += time.perf_counter() - start
                self._observe(row, result)
        else:
            if cfg.final_turn == "answer" and self._can_continue(row):
                out = await self._generate(engine, row, params, cfg.max_turns, True, stats)
                self._consume(row, out, final=True)
        self._report_progress(rows)

    async def _generate(self, engine, row: Trajectory, params: SamplingParams, turn: int, final: bool,
                        stats: RolloutStats) -> GenOutput:
        turn_params = self._turn_params(params, [row], turn, final, turn_seed(params.seed, row.index, turn))
        turn_params.max_tokens_per_prompt = None  # one prompt: max_tokens is its budget
        start = time.perf_counter()
        stats.requests_started()
        try:
            out = await engine.agenerate(row.prompt + row.ids, turn_params, key=row.index)
        finally:
            stats.requests_done()
        row.busy_s += time.perf_counter() - start
        stats.count(out)
        return out
