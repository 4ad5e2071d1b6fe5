"""Supervised fine-tuning of a search simulator on the rows `collect` wrote (chat `messages`, last turn = target).

One code path for one CPU process, `torchrun --nproc_per_node N` on GPUs or CPUs: every process joins the default
process group (`init_dist`: gloo on CPU, nccl on CUDA; a 1-rank group without torchrun) and the model is sharded
with FSDP2 (`apply_fsdp2`), exactly as the RL workers do. The result is an HF directory (`save_hf`) that
`AutoModelForCausalLM.from_pretrained` and vLLM's OpenAI server load, i.e. what `SEARCH_MODE simulate_sft
SIMULATION_LLM <dir>` serves.

- Prompts are rendered with the model's own chat template (the server renders requests with the same one), and
  the loss is on the assistant turn only (its end-of-turn token included, so the model learns to stop).
- The loss is the mean over every target token of the optimizer step across all ranks and micro-batches, so it
  does not depend on how rows are cut into micro-batches or ranks (FSDP averages gradients over ranks; each
  rank's share is scaled by world_size / global target tokens).
- Micro-batches are cut by a token budget over length-sorted rows (`token_budget_sizes`), and every rank runs
  the same number of them (FSDP gathers weights in each forward; unequal counts would hang).
- Mixed precision as in the RL workers: fp32 master weights and optimizer, bf16 compute by default where it is
  native (CUDA, CPUs with AVX512-BF16/AMX).
- Rows longer than `max_length` tokens are dropped with a count (a cut target would teach the simulator to stop
  mid-document).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from verl.single_controller.dist import init_dist, resolve_device, set_torch_threads
from verl.trainer.config import OptimConfig
from verl.utils.logprob import score_tokens, supports_chunked_head
from verl.utils.models import resolve_model_path
from verl.utils.plain import iter_jsonl
from verl.workers.actor import global_sum, token_budget_sizes
from verl.workers.checkpoint import save_hf
from verl.workers.fsdp_utils import (
    apply_fsdp2,
    build_lr_scheduler,
    build_optimizer,
    clip_grad_norm,
    compute_dtype,
    cpu_has_native_bf16,
    full_state_dict,
    load_hf_model,
)

logger = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class SFTConfig:
    data: str  # JSONL from `collect` (rows with `messages`; `split` train/val when present)
    output_dir: str  # the HF directory to write
    model: str = "embedded"  # the base model (path or `embedded`)
    epochs: int = 1
    batch_size: int = 32  # rows per optimizer step, all ranks together
    max_tokens_per_micro: int = 4096  # token budget of one micro-batch per rank (rows x longest row)
    max_length: int = 1024  # rows longer than this many tokens are dropped
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5, lr_warmup_steps_ratio=0.05,
                                                                    warmup_style="cosine", min_lr_ratio=0.1))
    grad_clip: float = 1.0
    param_dtype: str = "auto"  # compute dtype: fp32 | bf16 | auto (bf16 on CUDA and on CPUs with native bf16)
    gradient_checkpointing: bool = False
    logits_chunk_size: int = 512  # target positions per chunk of vocabulary-wide logits (0: full logits)
    device: str = "auto"
    threads: int = 0  # torch threads per rank (0: cores / ranks on this node)
    val_max_rows: int = 256  # validation rows scored at the start and the end
    seed: int = 0
    max_steps: int = -1  # stop after this many optimizer steps (-1: all epochs)

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.max_length >= 16, f"max_length must be >= 16 tokens, got {self.max_length}"),
            (self.max_tokens_per_micro >= self.max_length,
             f"max_tokens_per_micro ({self.max_tokens_per_micro}) must be >= max_length ({self.max_length}) so "
             "that the longest kept row fits in one micro-batch"),
            (self.optim.lr > 0, f"lr must be > 0, got {self.optim.lr}"),
            (Path(self.data).is_file(), f"data: no such file {self.data!r} (write it with `python -m "
             "zerosearch.simulator collect`)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"simulator finetune: {msg}")


# ---------------------------------------------------------------------------------------------- data
def read_rows(path: str | Path) -> list[dict]:
    rows = []
    for n, r in iter_jsonl(path):
        msgs = r.get("messages")
        if not (isinstance(msgs, list) and len(msgs) >= 2 and msgs[-1].get("role") == "assistant"):
            raise ValueError(f"{path}:{n}: each row needs `messages` ending with an assistant turn (the target), "
                             "as `python -m zerosearch.simulator collect` writes")
        rows.append(r)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def tokenize(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one chat: labels are IGNORE on the prompt and the ids on the last (assistant) turn."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the prompt as a prefix of the full chat; cannot tell "
                         "the target tokens apart")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    return prompt_ids + target_ids, [IGNORE] * len(prompt_ids) + target_ids


def encode(tokenizer, rows: list[dict], max_length: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Tokenised rows no longer than `max_length` and the number dropped."""
    out = [tokenize(tokenizer, r["messages"]) for r in rows]
    kept = [x for x in out if len(x[0]) <= max_length]
    return kept, len(out) - len(kept)


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded [rows, longest] input_ids / attention_mask / labels (labels shifted at loss time)."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def n_targets(examples: list[tuple[list[int], list[int]]]) -> int:
    return sum(sum(1 for t in y[1:] if t != IGNORE) for _, y in examples)


def token_loss_sum(model, batch: dict[str, torch.Tensor], device: torch.device,
                   chunk_size: int = 512) -> torch.Tensor:
    """Sum of next-token cross-entropy over the target tokens of a micro-batch.

    `chunk_size` > 0 (and a plain linear head): only the target positions reach the lm_head, `chunk_size` of them at
    a time, recomputed in backward (verl.utils.logprob), so no [rows, length, V] logits exist; 0: full logits."""
    batch = {k: v.to(device) for k, v in batch.items()}
    if chunk_size > 0 and supports_chunked_head(model):
        ids, targets = batch["input_ids"], batch["labels"][:, 1:]
        pos = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        logp, _ = score_tokens(model, ids, batch["attention_mask"], pos, ids[:, 1:], targets != IGNORE,
                               chunk_size=chunk_size)
        return -logp.sum()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def micro_split(examples: list, max_tokens: int, device: torch.device) -> list[list]:
    """Length-sorted micro-batches under the token budget, the same count on every rank (a collective)."""
    ordered = sorted(examples, key=lambda e: len(e[0]))
    lengths = [len(e[0]) for e in ordered]
    count = int(global_sum(len(token_budget_sizes(lengths, max_tokens)) if ordered else 0, device,
                           op=dist.ReduceOp.MAX))
    if not ordered:
        return [[] for _ in range(count)]
    sizes = token_budget_sizes(lengths, max_tokens, min(count, len(ordered)))
    parts, start = [], 0
    for s in sizes:
        parts.append(ordered[start:start + s])
        start += s
    return parts + [[] for _ in range(count - len(parts))]


# ---------------------------------------------------------------------------------------------- training
class SimulatorSFT:
    def __init__(self, cfg: SFTConfig) -> None:
        from transformers import AutoTokenizer

        cfg.validate()
        self.cfg = cfg
        self.device_type = resolve_device(cfg.device)
        self.rank, self.world = init_dist(self.device_type)
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.device_type == "cuda" else (
            torch.device("cpu"))
        if self.device_type == "cpu":
            set_torch_threads(cfg.threads, int(os.environ.get("LOCAL_WORLD_SIZE", self.world)))
        torch.manual_seed(cfg.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model))
        rows = read_rows(cfg.data)
        train_rows = [r for r in rows if r.get("split", "train") == "train"]
        val_rows = [r for r in rows if r.get("split") == "val"][: cfg.val_max_rows]
        if not train_rows:
            raise ValueError(f"{cfg.data}: no rows with split 'train'")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.pad_id = int(pad)
        self.train, dropped = encode(self.tokenizer, train_rows, cfg.max_length)
        self.val, _ = encode(self.tokenizer, val_rows, cfg.max_length)
        if dropped:
            logger.warning("dropped %d of %d training rows longer than max_length=%d tokens", dropped,
                           len(train_rows), cfg.max_length)
        if not self.train:
            raise ValueError(f"every training row is longer than max_length={cfg.max_length} tokens; raise it")
        self.steps_per_epoch = math.ceil(len(self.train) / cfg.batch_size)
        total = self.steps_per_epoch * cfg.epochs
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps > 0 else total
        model = load_hf_model(cfg.model, gradient_checkpointing=cfg.gradient_checkpointing)
        dtype = cfg.param_dtype
        if dtype == "auto":
            dtype = "bf16" if self.device_type == "cuda" or cpu_has_native_bf16() else "fp32"
        self.model = apply_fsdp2(model, self.device_type, self.world,
                                 param_dtype=compute_dtype(dtype, self.device_type))
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg.optim, self.total_steps)

    def _shard(self, examples: list) -> list:
        return examples[self.rank::self.world]

    def step(self, examples: list) -> dict[str, float]:
        """One optimizer step over `examples` (all ranks pass the same global list)."""
        self.model.train()
        mine = self._shard(examples)
        total = global_sum(n_targets(mine), self.device)
        scale = self.world / max(total, 1.0)
        loss_sum = 0.0
        for part in micro_split(mine, self.cfg.max_tokens_per_micro, self.device):
            if part:
                loss = token_loss_sum(self.model, collate(part, self.pad_id), self.device, self.cfg.logits_chunk_size)
            else:  # a rank without rows still runs a forward, so FSDP's collectives line up
                dummy = collate([([self.pad_id, self.pad_id], [IGNORE, IGNORE])], self.pad_id)
                loss = token_loss_sum(self.model, dummy, self.device, self.cfg.logits_chunk_size) * 0.0
            (loss * scale).backward()
            loss_sum += float(loss.detach())
        grad_norm = clip_grad_norm(self.model, self.cfg.grad_clip)
        if math.isfinite(grad_norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return {"loss": global_sum(loss_sum, self.device) / max(total, 1.0), "grad_norm": grad_norm,
                "lr": self.scheduler.get_last_lr()[0], "tokens": total}

    @torch.no_grad()
    def evaluate(self, examples: list) -> float:
        """Mean token loss over `examples` (all ranks; nan without rows)."""
        if not examples:
            return float("nan")
        self.model.eval()
        mine = self._shard(examples)
        total = global_sum(n_targets(mine), self.device)
        loss_sum = 0.0
        for part in micro_split(mine, self.cfg.max_tokens_per_micro, self.device):
            batch = collate(part, self.pad_id) if part else collate([([self.pad_id] * 2, [IGNORE] * 2)], self.pad_id)
            loss_sum += float(token_loss_sum(self.model, batch, self.device, self.cfg.logits_chunk_size))
        return global_sum(loss_sum, self.device) / max(total, 1.0)

    def fit(self) -> dict:
        cfg = self.cfg
        history: list[dict] = []
        val_before = self.evaluate(self.val)
        logger.info("simulator SFT: %d train rows, %d val rows, %d steps, val loss before %.4f", len(self.train),
                    len(self.val), self.total_steps, val_before)
        rng = random.Random(cfg.seed)
        step, t0 = 0, time.monotonic()
        for epoch in range(cfg.epochs):
            order = list(range(len(self.train)))
            rng.shuffle(order)
            for start in range(0, len(order), cfg.batch_size):
                if step >= self.total_steps:
                    break
                m = self.step([self.train[i] for i in order[start:start + cfg.batch_size]])
                step += 1
                history.append({"step": step, "epoch": epoch, **m})
                if self.rank == 0 and (step == 1 or step % 10 == 0 or step == self.total_steps):
                    logger.info("step %d/%d loss %.4f grad_norm %.3f lr %.2e", step, self.total_steps, m["loss"],
                                m["grad_norm"], m["lr"])
        val_after = self.evaluate(self.val)
        summary = {"train_rows": len(self.train), "val_rows": len(self.val), "steps": step,
                   "val_loss_before": val_before, "val_loss_after": val_after,
                   "train_s": round(time.monotonic() - t0, 1), "world_size": self.world}
        self.save(summary, history)
        return summary

    def save(self, summary: dict, history: list[dict]) -> None:
        state = full_state_dict(self.model, dtype=torch.float32)  # a collective
        if self.rank == 0:
            out = save_hf(state, self.cfg.output_dir, self.cfg.model)
            cfg = asdict(self.cfg)
            (out / "simulator_sft.json").write_text(json.dumps({"config": cfg, "summary": summary}, indent=2))
            with open(out / "simulator_sft_history.jsonl", "w") as f:
                for h in history:
                    f.write(json.dumps(h) + "\n")
            logger.info("simulator written to %s (val loss %.4f -> %.4f)", out, summary["val_loss_before"],
                        summary["val_loss_after"])
        if dist.is_initialized():
            dist.barrier()


def finetune(cfg: SFTConfig) -> dict:
    return SimulatorSFT(cfg).fit()
