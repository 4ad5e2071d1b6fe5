"""Memory plan of a training job from the config alone: each process's peak, before any model loads.

The model's size comes from its config.json, read as JSON (hidden, intermediate, layers, heads, kv heads, vocab,
tied embeddings); the rest from the trainer config: lengths, micro-batches (rows, or a token budget with
use_dynamic_bsz), compute precision, gradient checkpointing, the chunked log-prob head, reference and critic,
offload, the colocated engines. `verl.utils.memory_fit` compares the plan with the machine and adjusts the config;
`benchmarks/memory_plan.py` prints the tables and re-measures the empirical inputs (`--calibrate`).

Training process (one FSDP rank of N, P parameters, compute dtype of w bytes, fp32 master weights, AdamW):
    base      = runtime + 16 P / N       fp32 params 4 + grads 4 + exp_avg 4 + exp_avg_sq 4, sharded
              + 4 P / N                  the reference, if any (fp32, like the actor)
              + w_r P                    the HF rollout engine's own copy (rollout.name=hf)
    peak      = base + max(update, log-prob pass, reference pass, optimizer step 4 P / N, weight sync, HF export of a
                           checkpoint 8 P, HF generate)
    update    = w (P_root + 2 P_layer)   FSDP2 keeps the root unit and ~2 decoder layers gathered
              + tokens x act_token       activations of the largest micro-batch
              + head                     chunked: chunk x V x (12 + 2 in bf16) + the kept hidden states and their
                                         gradient + the fp32 gradient of the output embedding; full logits:
                                         response positions x V x 14 (bf16 logits 2, fp32 copy 4, softmax/grad 8)
              + 3 x V h 4                backward temporaries of the embedding / lm_head gradients (calibrated)
              + 4 P                      with > 1 micro-batch per mini-batch: FSDP2 keeps unsharded fp32 gradients
                                         between micro-batches (no reduce-scatter before the last one), even on one
                                         rank (bench_scaling: +0.86 GB from one micro-batch to two, 4 P = 0.54 GB)
    act_token = L a_layer                no checkpointing
              = L k_layer + a_layer      HF non-reentrant checkpointing: each layer's inputs, one layer recomputed
    a_layer   = 28 h + 4 kv + 12 I       bf16 compute, fp32 master weights (FSDP2 mixed precision): 35 kB per token
                                         per layer for the 135M model; the update measured ~33 kB (norms and
                                         attention keep fp32 copies; saved-tensor hooks alone count 24.8 kB)
              = 52 h + 8 kv + 16 I       fp32: 56 kB, as a plain HF forward + backward measured (55 kB); the update
                                         measured 32 kB on a Xeon, and >= 42 kB on an AMD EPYC (the run Ray killed):
                                         the plan keeps the larger number, since either host kind may run it
    k_layer   = 5 h w                    kept per checkpointed layer (measured 20 h in fp32, 10 h in bf16: more than
                                         the layer's input alone)
    weight sync = 2 w_r P for vLLM (the gathered state dict + its safetensors buffer), w_r P for the HF engine (on
                CUDA the gathered dict is on the GPU and the safetensors copies in host RAM)
vLLM on CPU (rollout.name=vllm): an EngineCore process and a worker process holding the weights, the CPU GEMM
repack of them and, during a sync, the mmap of the reloaded weight file (3 w_r P), plus the KV cache
(rollout.kv_cache_space_gb); on CUDA the engine takes gpu_memory_utilization of the GPU. The simulation server
that the launcher starts on this machine is `trainer.colocated_server_gb` (computed with `vllm_server_bytes`).
Runtime baselines (imported torch, transformers, vLLM, Ray) are measured constants (RUNTIME).

A micro-batch under a token budget B holds rows x longest row <= B tokens (one row when B is below a row); its
scored response positions are taken as the response share of full-length rows. Dense decoder models only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

GB, GIB = 1e9, float(1 << 30)

# Empirical inputs (RSS bytes, rounded up): the import probes of `benchmarks/memory_plan.py --calibrate` and the
# per-step perf/max_memory_rss_gb/<process> of CPU runs (the quickstart, tests/verl/trainer/test_e2e.py).
RUNTIME = {
    "driver": 1.00 * GB,  # the Ray driver: torch, transformers, tokenizer, datasets, rollout/reward functions
    "ray": 0.80 * GB,  # Ray's daemons (gcs_server, raylet, log monitor, idle workers)
    "worker": 0.70 * GB,  # a Ray actor with torch, transformers, FSDP and our workers imported
    "vllm_client": 0.25 * GB,  # what a vllm.LLM adds to the process that owns it (vLLM, tokenizer, client)
    "vllm_engine_core": 0.85 * GB,  # vLLM's EngineCore process
    "vllm_worker": 0.95 * GB,  # vLLM's model-runner process before weights and KV cache
    "vllm_api_server": 0.95 * GB,  # the OpenAI API server process of a simulation server
    "cuda_context": 0.60 * GB,  # GPU memory of a CUDA context (not in torch.cuda.memory_allocated)
    # of each Python process's RSS, the pages mapped from files (torch's and vLLM's libraries: RssFile after the
    # imports): page cache, which the machine holds once and Ray's monitor counts as available
    "file_backed": 0.17 * GB,
}
BACKWARD_VH = 3.0  # backward temporaries in units of V x h x 4 bytes (calibrated)
HEAD_FULL_BYTES = 14  # per response position per vocabulary entry, full logits
HEAD_CHUNK_BYTES = 12  # per chunk position per vocabulary entry: fp32 logits, probabilities, their gradient
HOST_SLACK = 1.15  # glibc keeps freed chunks: a phase's peak RSS runs ~15% above its live tensors (measured 14-21%)


@dataclass(frozen=True)
class ModelDims:
    name: str
    hidden: int
    inter: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    head_dim: int = 0  # 0: hidden // heads

    @property
    def kv(self) -> int:
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    def layer_params(self) -> int:
        h, q, kv, i = self.hidden, self.heads * (self.head_dim or self.hidden // self.heads), self.kv, self.inter
        return 2 * h * q + 2 * h * kv + 3 * h * i + 2 * h + ((q + 2 * kv) if self.qkv_bias else 0)

    def root_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def params(self) -> int:
        return self.layers * self.layer_params() + self.root_params()

    def value_params(self) -> int:
        """The critic: the same backbone with a scalar head instead of the lm_head."""
        return self.layers * self.layer_params() + self.vocab * self.hidden + 2 * self.hidden

    def act_layer(self, w: int) -> float:
        """Bytes autograd keeps per token per decoder layer (w: compute dtype bytes)."""
        h, kv, i = self.hidden, self.kv, self.inter
        return float(28 * h + 4 * kv + 12 * i) if w <= 2 else float(52 * h + 8 * kv + 16 * i)

    def act_token(self, w: int, ckpt: bool) -> float:
        """Activation bytes per token of the whole decoder, with or without gradient checkpointing."""
        if ckpt:
            return self.layers * 5.0 * self.hidden * w + self.act_layer(w)
        return self.layers * self.act_layer(w)

    def kv_per_token(self, w: int) -> int:
        return 2 * self.layers * self.kv * w

    @classmethod
    def from_hf_config(cls, c: dict, name: str = "model") -> ModelDims:
        c = c.get("text_config", c)
        try:
            return cls(name, int(c["hidden_size"]), int(c["intermediate_size"]), int(c["num_hidden_layers"]),
                       int(c["num_attention_heads"]), int(c.get("num_key_value_heads") or c["num_attention_heads"]),
                       int(c["vocab_size"]), bool(c.get("tie_word_embeddings", False)),
                       bool(c.get("attention_bias", c.get("model_type") == "qwen2")), int(c.get("head_dim") or 0))
        except KeyError as e:
            raise ValueError(f"the config.json of {name} lacks {e.args[0]}: the memory plan needs a dense decoder "
                             "config (or set trainer.memory_plan=off)") from None


SMOLLM2_135M = ModelDims("SmolLM2-135M", 576, 1536, 30, 9, 3, 49152, True, False, 64)
QWEN25_3B = ModelDims("Qwen2.5-3B", 2048, 11008, 36, 16, 2, 151936, True, True)
QWEN25_7B = ModelDims("Qwen2.5-7B", 3584, 18944, 28, 28, 4, 152064, False, True)


def model_dims(path: str) -> ModelDims | None:
    """Dims from `path`'s config.json (a local dir, the embedded model, or a hub id already in the HF cache);
    None when no config can be read without a download. Never loads weights."""
    from verl.utils.models import EMBEDDED_NAME, cache_dir, is_embedded

    if is_embedded(path):
        local = cache_dir() / "models" / EMBEDDED_NAME / "config.json"
        return ModelDims.from_hf_config(json.loads(local.read_text()), "embedded") if local.exists() else SMOLLM2_135M
    local = Path(path) / "config.json"
    if not local.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(path, "config.json")
        except Exception:  # not a repo id, or no hub client: no plan
            cached = None
        if not isinstance(cached, str):
            return None
        local = Path(cached)
    return ModelDims.from_hf_config(json.loads(local.read_text()), path)


# --------------------------------------------------------------------------------------------- components
@dataclass(frozen=True)
class Head:
    """How log-probs meet the vocabulary: `chunk` positions at a time (recomputed in backward), or full logits."""

    chunked: bool = True
    chunk: int = 512
    checkpoint: bool = True


@dataclass(frozen=True)
class Pass:
    """The largest micro-batch of a pass: `tokens` (rows x longest row), `resp` of them scored."""

    tokens: float
    resp: float


def micro_pass(seq: int, resp: int, *, rows: int = 0, budget: int = 0, cap_rows: int = 0) -> Pass:
    """`rows` full rows, or (budget > 0) as many as a token budget holds (at least one); at most `cap_rows`."""
    tokens = float(max(budget, seq)) if budget > 0 else float(max(1, rows) * seq)
    if cap_rows > 0:
        tokens = min(tokens, float(cap_rows * seq))
    return Pass(tokens, tokens * resp / seq)


def head_bytes(d: ModelDims, resp: float, w: int, head: Head, grad: bool) -> float:
    """The log-prob/entropy head over `resp` scored positions (forward, and backward when `grad`)."""
    if not head.chunked:
        return resp * d.vocab * (HEAD_FULL_BYTES if grad else HEAD_FULL_BYTES - 2)
    chunk = min(float(head.chunk), resp)
    logits = chunk * d.vocab * (HEAD_CHUNK_BYTES + (2 if w <= 2 else 0))
    if grad and not head.checkpoint:  # every chunk's fp32 logits and probabilities stay alive until backward
        logits += resp * d.vocab * 8
    hidden = resp * d.hidden * w * (2 if grad else 1)
    grad_w = d.vocab * d.hidden * (4 + (2 if w <= 2 else 0)) if grad else 0.0
    return logits + hidden + grad_w


def gathered_bytes(d: ModelDims, w: int) -> float:
    return float(w * (d.root_params() + 2 * d.layer_params()))


def update_bytes(d: ModelDims, mb: Pass, *, w: int, ckpt: bool, head: Head | None,
                 accum: bool = False) -> dict[str, float]:
    """Transient bytes of one forward + backward (head None: a value model, no vocabulary head)."""
    out = {"gathered": gathered_bytes(d, w), "activations": mb.tokens * d.act_token(w, ckpt),
           "backward": BACKWARD_VH * d.vocab * d.hidden * 4}
    if head is not None:
        out["head"] = head_bytes(d, mb.resp, w, head, grad=True)
    if accum:
        out["no-sync grads"] = 4.0 * d.params()
    return out


def forward_bytes(d: ModelDims, mb: Pass, *, w: int, head: Head | None) -> dict[str, float]:
    """Transient bytes of a no-grad forward (log-probs, values): one layer's temporaries and the head."""
    out = {"gathered": gathered_bytes(d, w), "activations": mb.tokens * (d.act_layer(w) + 2 * d.hidden * w)}
    if head is not None:
        out["head"] = head_bytes(d, mb.resp, w, head, grad=False)
    return out


def vllm_engine_bytes(d: ModelDims, *, w: int, kv_gb: float, max_num_seqs: int = 64) -> dict[str, float]:
    """A CPU vLLM engine's processes: EngineCore, and the worker (weights, repack, reload mmap, KV, activations)."""
    act = max_num_seqs * d.vocab * 8 + 2048 * (4 * d.hidden + 3 * d.inter) * w  # logits + a prefill chunk
    return {"engine_core": RUNTIME["vllm_engine_core"],
            "worker": RUNTIME["vllm_worker"] + 3.0 * w * d.params() + kv_gb * GIB + act}


def vllm_server_bytes(d: ModelDims, *, w: int = 4, kv_gb: float = 1.0) -> float:
    """A vLLM OpenAI server on CPU (the launcher's simulation server): API server + engine, weights never
    reloaded (2 w P instead of 3)."""
    return RUNTIME["vllm_api_server"] + sum(vllm_engine_bytes(d, w=w, kv_gb=kv_gb).values()) - w * d.params()


def hf_generate_bytes(d: ModelDims, *, w: int, rows: int, seq: int, prompt: int) -> float:
    """The HF engine's decode: KV cache of `rows` x `seq` tokens, one prefill layer, last-position logits."""
    return rows * seq * d.kv_per_token(w) + rows * prompt * (4 * d.hidden + 3 * d.inter) * w + rows * d.vocab * 8


@dataclass
class ProcessPlan:
    """`count` processes of one kind per machine, each peaking at `host` bytes of RAM and `gpu` bytes of GPU
    memory (CUDA); `parts` are the components of the peak (base + the largest phase)."""

    name: str
    count: int
    host: float
    gpu: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)
    file: float = RUNTIME["file_backed"]  # of `host`, pages mapped from files (page cache, not used RAM for Ray)


def peak_of(name: str, count: int, base: dict[str, float], phases: dict[str, dict[str, float]],
            on_gpu: bool = False, host_extra: float = 0.0) -> ProcessPlan:
    """base + the largest phase, in host RAM (CPU, with the allocator's slack on the phase) or in GPU memory (CUDA,
    with `host_extra` on the host)."""
    top = max(phases, key=lambda k: sum(phases[k].values())) if phases else ""
    parts = {**base, **{f"{top}/{k}": v for k, v in (phases.get(top) or {}).items()}}
    if on_gpu:
        return ProcessPlan(name, count, host_extra, sum(parts.values()), parts)
    parts[f"{top}/allocator slack"] = (HOST_SLACK - 1.0) * sum((phases.get(top) or {}).values())
    return ProcessPlan(name, count, sum(parts.values()) + host_extra, 0.0, parts)


@dataclass(frozen=True)
class Budget:
    """What the job may use on one machine: `host` bytes of RAM (`others` of them already used by processes
    outside the plan) and, on CUDA, `gpu` bytes per GPU."""

    host: float = float("inf")
    source: str = "no limit"
    gpu: float = 0.0
    gpu_source: str = ""
    others: float = 0.0


@dataclass
class MemoryPlan:
    """The plan of one machine: its processes, what they may use (`budget`, `gpu_budget`), where those came from."""

    processes: list[ProcessPlan]
    budget: float
    budget_source: str
    gpu_budget: float = 0.0
    gpu_source: str = ""
    others: float = 0.0  # RAM already used on this machine by processes outside the plan (measured)

    @property
    def total(self) -> float:
        """Summed peak RSS of the job's processes on this machine (what perf/max_memory_rss_gb measures)."""
        return sum(p.host * p.count for p in self.processes)

    @property
    def machine(self) -> float:
        """What Ray's monitor will count as used (total - available): the job's RSS without its file-backed pages
        (page cache), plus the other processes' use."""
        return sum((p.host - p.file) * p.count for p in self.processes) + self.others

    @property
    def gpu_total(self) -> float:
        """Per GPU: every rank's colocated processes share one GPU."""
        return sum(p.gpu for p in self.processes)

    @property
    def fits(self) -> bool:
        return self.machine <= self.budget and (self.gpu_budget <= 0 or self.gpu_total <= self.gpu_budget)

    def get(self, name: str) -> ProcessPlan | None:
        return next((p for p in self.processes if p.name == name), None)

    def metrics(self) -> dict[str, float]:
        """`perf/max_memory_planned_gb/<process>` (one process of each kind) and `/total` (the machine)."""
        out = {f"perf/max_memory_planned_gb/{p.name}": p.host / GB for p in self.processes}
        out["perf/max_memory_planned_gb/total"] = self.total / GB
        if self.gpu_budget > 0:
            out["perf/max_memory_planned_gb/gpu"] = self.gpu_total / GB
        return out

    def describe(self) -> str:
        parts = " + ".join(f"{p.name} {p.host / GB:.2f}" + (f" x {p.count}" if p.count > 1 else "")
                           for p in self.processes)
        others = f" + others on this machine {self.others / GB:.2f}" if self.others else ""
        text = f"{parts} = {self.total / GB:.2f} GB RSS; without its file pages{others}: {self.machine / GB:.2f} GB " \
               f"of {self.budget / GB:.2f} GB ({self.budget_source})"
        if self.gpu_budget > 0:
            text += f"; per GPU {self.gpu_total / GB:.2f} GB of {self.gpu_budget / GB:.2f} GB ({self.gpu_source})"
        return text
