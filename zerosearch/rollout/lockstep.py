"""The lockstep rollout (`actor_rollout_ref.rollout.mode=sync`): all rows advance turn by turn.

    for turn in range(max_turns):                    # search turns
        active rows generate (one engine call; stop at the search's closing tag / </answer>, EOS, or the row's budget)
        first action of each row's new text (base.py: SearchRollout._consume)
        one batched backend call for the rows that searched; their observations appended (mask 0)
    final turn: still-active rows generate once more with stop only at </answer>; no search is ever run there.

This is how Search-R1 and the original ZeroSearch play a batch, and the reference the asynchronous loop must
equal on greedy decoding (tests/zerosearch/rollout/test_agent_loop.py). Each turn waits for its longest row and
its slowest search; `agent_loop.py` removes both waits. Works with any `RolloutEngine` (the HF engine too).

One engine call per turn; each row's request is capped at its own remaining budget
(`SamplingParams.max_tokens_per_prompt`), so no decode step is spent on tokens past a row's budget. A row that
still returns more than its budget (an engine ignoring the caps) is cut there and ends with reason "length".
"""

from __future__ import annotations

import time

from verl.workers.rollout.base import GenOutput, RolloutEngine, SamplingParams
from zerosearch.rollout.base import RolloutStats, SearchRollout, Trajectory, register_rollout_mode, turn_seed


@register_rollout_mode("sync")
class LockstepRollout(SearchRollout):
    """Turn-synchronous rollout: one engine call per turn over all active rows, then one search burst."""

    def _play(self, rows: list[Trajectory], engine: RolloutEngine, params: SamplingParams, noise_p: float,
              stats: RolloutStats) -> None:
        cfg = self.cfg
        for turn in range(cfg.max_turns):
            active = [row for row in rows if self._can_continue(row)]
            if not active:
                return
            outputs = self._generate(engine, active, params, turn, final=False, stats=stats)
            searching = [(row, query) for row, out in zip(active, outputs)
                         if (query := self._consume(row, out, final=False)) is not None]
            self._report_progress(rows)
            if searching:
                start = time.perf_counter()
                results = self._search([self._request(row, q, noise_p, params.seed, turn) for row, q in searching])
                elapsed = time.perf_counter() - start
                for (row, _), result in zip(searching, results):
                    self._observe(row, result)
                    row.busy_s += result.latency_s if result.latency_s else elapsed
                    stats.search_latency_s.append(result.latency_s if result.latency_s else elapsed)
        if cfg.final_turn == "answer":
            active = [row for row in rows if self._can_continue(row)]
            if active:
                outputs = self._generate(engine, active, params, cfg.max_turns, final=True, stats=stats)
                for row, out in zip(active, outputs):
                    self._consume(row, out, final=True)

    def _generate(self, engine: RolloutEngine, active: list[Trajectory], params: SamplingParams, turn: int,
                  final: bool, stats: RolloutStats) -> list[GenOutput]:
        turn_params = self._turn_params(params, active, turn, final, turn_seed(params.seed, 0, turn))
        start = time.perf_counter()
        stats.requests_started(len(active))
        outputs = engine.generate([row.prompt + row.ids for row in active], turn_params)
        stats.requests_done(len(active))
        if len(outputs) != len(active):
            raise RuntimeError(f"the rollout engine returned {len(outputs)} outputs for {len(active)} prompts")
        elapsed = time.perf_counter() - start
        for row, out in zip(active, outputs):
            row.busy_s += elapsed  # a row of a batched call waits for the whole call
            stats.count(out)
        return outputs
