"""Scaling and memory of our GRPO trainer on CPU: step time (timing_s/step and its timing_s/* parts) and peak RSS
per process (driver, the Ray actor worker, the vLLM engine-core and vLLM worker processes it spawns, Ray's own
daemons) vs batch size and vs response length, with the embedded SmolLM2-135M-Instruct on a single-turn
arithmetic task, vLLM rollouts, bf16 compute (`actor_rollout_ref.actor.fsdp_config.param_dtype=bf16`), one
worker, on-policy GRPO without KL (no reference model, no old-log-prob pass), micro-batch 8 rows.

Each grid point is a fresh process (per-process peaks do not carry over) running `total_training_steps =
1 + steps`: step 1 is the warm-up, the medians are over the others. A background thread samples the process
tree every 0.5 s: RSS and the kernel's high-water mark VmHWM (/proc/PID/status), PSS every 2 s
(/proc/PID/smaps_rollup: shared pages split between processes, so PSS adds up), and how many steps were logged,
which separates the warm-up from the measured steps ("steady" peaks). The prompt asks for a lesson on the sum so
that most responses run to the token cap (clip ratio recorded): the length axis is the real number of generated
tokens. The memory accounting that explains these numbers, and the GPU plan, are in `memory_plan.py`.

Commands that produced benchmarks/results/bench_scaling.{jsonl,md}:
    timeout 1500 .venv/bin/python benchmarks/bench_scaling.py --points 2x128 4x128 8x128 16x128
    timeout 1500 .venv/bin/python benchmarks/bench_scaling.py --points 4x64 4x256
    timeout 600 .venv/bin/python benchmarks/memory_plan.py --calibrate
    .venv/bin/python benchmarks/bench_scaling.py --report      # plots + markdown tables from the JSONL
    .venv/bin/python benchmarks/memory_plan.py --plan          # the accounting vs these runs, and the GPU plan
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from results_io import append_record, pyplot

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_scaling.jsonl"
PLOTS = ROOT / "benchmarks" / "plots"
PROMPT = ("Write a detailed lesson for children that explains how to compute {a} + {b}, with several examples, "
          "and end with the answer.")
FINAL_ROLES = ("driver", "actor_worker", "vllm_worker", "vllm_engine_core")
ROLES = ("driver", "actor_worker", "vllm_worker", "vllm_engine_core", "ray_infra", "ray_idle_worker", "other")
logger = logging.getLogger("bench_scaling")


# ---------------------------------------------------------------------------------------------- memory sampling
def _proc_kb(pid: int, fname: str, keys: tuple[str, ...]) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/{fname}") as f:
        for line in f:
            if line.startswith(keys):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def role_of(pid: int, root: int, cmdline: str) -> str:
    """Which part of the trainer a process is (see ROLES); Ray and vLLM retitle their processes."""
    if pid == root:
        return "driver"
    if "_WorkerHost" in cmdline or "workers/default_worker.py" in cmdline:  # only our actors run in Ray workers
        return "actor_worker"
    if cmdline.startswith("VLLM::Worker") or "VllmWorker" in cmdline:
        return "vllm_worker"
    if cmdline.startswith("VLLM") or "EngineCore" in cmdline:
        return "vllm_engine_core"
    if cmdline.startswith("ray::"):
        return "ray_idle_worker"
    if any(s in cmdline for s in ("gcs_server", "raylet", "/ray/", "ray/_private", "ray.util", "dashboard")):
        return "ray_infra"
    return "other"


class TreeSampler(threading.Thread):
    """Samples RSS / VmHWM / PSS of every process under `root` until stopped."""

    def __init__(self, root: int, metrics_path: Path, interval: float = 0.5, pss_every: int = 4) -> None:
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.root, self.metrics_path = psutil, root, metrics_path
        self.interval, self.pss_every = interval, pss_every
        self.procs: dict[int, dict] = {}
        self.timeline: list[dict] = []  # per sample: seconds since start, steps logged, RSS MB per role
        self.t0 = time.monotonic()
        self._halt = threading.Event()

    def _steps_logged(self) -> int:
        try:
            with self.metrics_path.open() as f:
                return sum(1 for _ in f)
        except OSError:
            return 0

    def _record(self, p, steps: int, tick: int) -> tuple[str, float]:
        rec = self.procs.get(p.pid)
        if rec is None or rec["role"] not in FINAL_ROLES:  # Ray and vLLM retitle processes after they start
            cmd = " ".join(p.cmdline())[:160]
            if rec is None:
                rec = self.procs[p.pid] = {"pid": p.pid, "peak_rss_mb": 0.0, "hwm_mb": 0.0, "peak_pss_mb": 0.0,
                                           "peak_rss_steady_mb": 0.0}
            rec["cmd"], rec["role"] = cmd, role_of(p.pid, self.root, cmd)
        st = _proc_kb(p.pid, "status", ("VmRSS:", "VmHWM:"))
        rss = st.get("VmRSS", 0) / 1024
        rec["peak_rss_mb"] = max(rec["peak_rss_mb"], rss)
        rec["hwm_mb"] = max(rec["hwm_mb"], st.get("VmHWM", 0) / 1024)
        if steps >= 1:  # the warm-up step is logged: steady state
            rec["peak_rss_steady_mb"] = max(rec["peak_rss_steady_mb"], rss)
        if tick % self.pss_every == 0:
            pss = _proc_kb(p.pid, "smaps_rollup", ("Pss:",)).get("Pss", 0) / 1024
            rec["peak_pss_mb"] = max(rec["peak_pss_mb"], pss)
        return rec["role"], rss

    def sample(self, tick: int) -> None:
        try:
            top = self.psutil.Process(self.root)
            tree = [top, *top.children(recursive=True)]
        except self.psutil.Error:
            return
        steps = self._steps_logged()
        by_role: dict[str, float] = {}
        for p in tree:
            try:
                role, rss = self._record(p, steps, tick)
            except (OSError, self.psutil.Error):  # the process ended between listing and reading
                continue
            by_role[role] = by_role.get(role, 0.0) + rss
        self.timeline.append({"t": round(time.monotonic() - self.t0, 1), "steps": steps,
                              **{k: round(v) for k, v in by_role.items()}})

    def run(self) -> None:
        tick = 0
        while not self._halt.is_set():
            self.sample(tick)
            tick += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def summary(self) -> dict:
        """Per role: process count, largest single-process peak RSS (overall / steady), peak PSS, summed PSS."""
        roles: dict[str, dict] = {}
        for rec in self.procs.values():
            r = roles.setdefault(rec["role"], {"n": 0, "peak_rss_mb": 0.0, "peak_rss_steady_mb": 0.0,
                                               "peak_pss_mb": 0.0, "sum_peak_pss_mb": 0.0})
            r["n"] += 1
            r["peak_rss_mb"] = max(r["peak_rss_mb"], rec["peak_rss_mb"], rec["hwm_mb"])
            r["peak_rss_steady_mb"] = max(r["peak_rss_steady_mb"], rec["peak_rss_steady_mb"])
            r["peak_pss_mb"] = max(r["peak_pss_mb"], rec["peak_pss_mb"])
            r["sum_peak_pss_mb"] += rec["peak_pss_mb"]
        total = max((sum(v for k, v in s.items() if k not in ("t", "steps")) for s in self.timeline), default=0)
        return {"roles": {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in roles.items()},
                "peak_total_rss_mb": round(total, 1),
                "sum_peak_pss_mb": round(sum(r["peak_pss_mb"] for r in self.procs.values()), 1),
                "processes": sorted(({k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()}
                                     for r in self.procs.values()), key=lambda r: -r["hwm_mb"])}


# ---------------------------------------------------------------------------------------------- one grid point
def write_data(path: Path, n: int, seed: int) -> None:
    import pandas as pd

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append({"prompt": [{"role": "user", "content": PROMPT.format(a=a, b=b)}], "data_source": "arith",
                     "question": f"{a}+{b}", "golden_answers": [str(a + b)], "ability": "math",
                     "reward_model": {"style": "rule", "ground_truth": {"target": [str(a + b)]}},
                     "extra_info": {"index": i, "split": "train"}})
    pd.DataFrame(rows).to_parquet(path)


def overrides_for(prompts: int, length: int, steps: int, micro: int, out: Path, data: Path) -> list[str]:
    return [
        f"data.train_files=[{data}]", "data.val_files=[]", "data.max_prompt_length=96",
        f"data.max_response_length={length}", f"data.train_batch_size={prompts}",
        "actor_rollout_ref.model.path=embedded", "actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.rollout.temperature=1.0", f"actor_rollout_ref.actor.ppo_mini_batch_size={prompts}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}", "actor_rollout_ref.actor.optim.lr=1e-6",
        "actor_rollout_ref.actor.use_kl_loss=false", "actor_rollout_ref.actor.fsdp_config.param_dtype=bf16",
        "trainer.device=cpu", "trainer.n_gpus_per_node=1", f"trainer.total_training_steps={1 + steps}",
        "trainer.logger=[jsonl]", f"trainer.default_local_dir={out}", "trainer.test_freq=-1", "trainer.save_freq=-1",
        "trainer.val_before_train=false", "trainer.resume_mode=disable",
    ]


def medians(rows: list[dict]) -> dict[str, float]:
    keys = sorted({k for r in rows for k in r if k.startswith(("timing_s/", "perf/", "response_length"))})
    return {k: statistics.median(r[k] for r in rows if k in r) for k in keys}


def machine() -> dict:
    import torch
    import vllm

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu if ln.startswith("Model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "vllm": vllm.__version__,
            "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds")}


def run_point(prompts: int, length: int, steps: int, micro: int, tag: str) -> dict:
    from verl.trainer.main_ppo import compose_config, run

    with tempfile.TemporaryDirectory(prefix="bench_scaling-") as tmp:
        out, data = Path(tmp) / "run", Path(tmp) / "train.parquet"
        write_data(data, prompts * (1 + steps), seed=0)
        overrides = overrides_for(prompts, length, steps, micro, out, data)
        metrics_path = out / "logs" / "metrics.jsonl"
        sampler = TreeSampler(os.getpid(), metrics_path)
        sampler.start()
        try:
            run(compose_config("ppo_trainer", overrides))
        finally:
            sampler.stop()
        rows = [json.loads(x) for x in metrics_path.read_text().splitlines()]
    wall = sampler.timeline[-1]["t"] if sampler.timeline else None
    first = next((s["t"] for s in sampler.timeline if s["steps"] >= 1), None)
    keep = ("timing_s/", "perf/", "response_length", "step", "critic/score/mean")
    return {"bench": "bench_scaling", "tag": tag, "machine": machine(), "prompts": prompts, "samples_per_prompt": 4,
            "batch_rows": prompts * 4, "max_response_length": length, "warmup_steps": 1, "measured_steps": steps,
            "micro_batch_per_gpu": micro, "overrides": overrides, "wall_s": wall,
            "init_s": round(first - rows[0]["timing_s/step"], 1) if first is not None else None,
            "medians": medians([r for r in rows if r["step"] > 1]),
            "steps": [{k: v for k, v in r.items() if k.startswith(keep)} for r in rows],
            **sampler.summary(), "timeline": sampler.timeline[::2]}


# ---------------------------------------------------------------------------------------------- report
def load(path: str | Path) -> dict[tuple[int, int], dict]:
    """Latest record per (prompts, max_response_length)."""
    latest: dict[tuple[int, int], dict] = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if r.get("bench") == "bench_scaling":  # calibration records live in the same file
            latest[(r["prompts"], r["max_response_length"])] = r
    return latest


PARTS = ("gen", "update_actor", "sync_weights")
MEM_ROLES = ("actor_worker", "vllm_worker", "vllm_engine_core", "driver")


def _parts(r: dict) -> dict[str, float]:
    m = r["medians"]
    parts = {p: m.get(f"timing_s/{p}", 0.0) for p in PARTS}
    parts["other"] = max(0.0, m["timing_s/step"] - sum(parts.values()))
    return parts


def tables(path: str | Path) -> str:
    recs = sorted(load(path).values(), key=lambda r: (r["max_response_length"], r["prompts"]))
    if not recs:
        return "no results"
    base = next((r for r in recs if (r["prompts"], r["max_response_length"]) == (4, 128)), recs[0])
    out = ["| prompts x 4 | max tokens | mean resp. tokens | clip ratio | step s | x (4x128) | gen s | update s "
           "| sync s | tokens/s | actor worker MB | vLLM worker MB | vLLM core MB | driver MB | sum PSS MB |",
           "|" + "---|" * 15]
    for r in recs:
        m, roles = r["medians"], r["roles"]
        mb = [roles.get(k, {}).get("peak_rss_mb", 0) for k in MEM_ROLES]
        out.append(f"| {r['prompts']} | {r['max_response_length']} | {m.get('response_length/mean', 0):.0f} | "
                   f"{m.get('response_length/clip_ratio', 0):.2f} | {m['timing_s/step']:.1f} | "
                   f"{m['timing_s/step'] / base['medians']['timing_s/step']:.2f} | {m.get('timing_s/gen', 0):.1f} | "
                   f"{m.get('timing_s/update_actor', 0):.1f} | {m.get('timing_s/sync_weights', 0):.2f} | "
                   f"{m['perf/total_num_tokens'] / m['timing_s/step']:.0f} | " + " | ".join(f"{x:.0f}" for x in mb)
                   + f" | {r['sum_peak_pss_mb']:.0f} |")
    return "\n".join(out)


def plot(path: str | Path, out_dir: Path) -> list[Path]:
    """Two figures: time parts (stacked) and peak RSS per process vs batch (at 128 tokens) and vs length (4 prompts)."""
    plt = pyplot("bench_scaling")
    if plt is None:
        return []

    recs = load(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fixed, vary, label in (("batch", 128, 0, "rollouts per step (prompts x 4 samples)"),
                                     ("length", 4, 1, "max response tokens (4 prompts x 4 samples)")):
        pts = sorted((r for k, r in recs.items() if k[1 - vary] == fixed), key=lambda r: r["prompts"] * 1000
                     + r["max_response_length"])
        if len(pts) < 2:
            continue
        xs = [r["batch_rows"] if vary == 0 else r["max_response_length"] for r in pts]
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
        bottom = [0.0] * len(pts)
        width = (max(xs) - min(xs)) / len(xs) * 0.5
        for part in (*PARTS, "other"):
            vals = [_parts(r)[part] for r in pts]
            ax.bar(xs, vals, width=width, bottom=bottom, label=part)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xlabel(label)
        ax.set_ylabel("median step time (s)")
        ax.set_xticks(xs)
        ax.legend(fontsize=8)
        ax.set_title("GRPO step time, 135M bf16, 1 CPU worker")
        for role in MEM_ROLES:
            bx.plot(xs, [r["roles"].get(role, {}).get("peak_rss_mb", 0) / 1024 for r in pts], marker="o", label=role)
        bx.plot(xs, [r["sum_peak_pss_mb"] / 1024 for r in pts], marker="s", ls="--", label="all processes (PSS)")
        bx.set_xlabel(label)
        bx.set_ylabel("peak memory (GiB)")
        bx.set_xticks(xs)
        bx.set_ylim(bottom=0)
        bx.legend(fontsize=8)
        bx.set_title("peak RSS per process")
        fig.tight_layout()
        dest = out_dir / f"bench_scaling_{name}.png"
        fig.savefig(dest, dpi=110)
        plt.close(fig)
        written.append(dest)
    return written


# ---------------------------------------------------------------------------------------------- CLI
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", nargs="*", default=["2x64"], help="PROMPTSxMAX_TOKENS, e.g. 2x128 4x128 8x128 4x256")
    ap.add_argument("--steps", type=int, default=2, help="measured steps per point (after one warm-up step)")
    ap.add_argument("--micro", type=int, default=8, help="actor ppo_micro_batch_size_per_gpu (rows)")
    ap.add_argument("--tag", default="", help="free-form label stored with the results")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one point in this process
    ap.add_argument("--report", action="store_true", help="only draw the plots and print tables from --out")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.one:
        prompts, length = (int(x) for x in args.one.split("x"))
        res = run_point(prompts, length, args.steps, args.micro, args.tag)
        append_record(args.out, res)
        m = res["medians"]
        print(f"{args.one}: step {m.get('timing_s/step', float('nan')):.1f} s, gen {m.get('timing_s/gen', 0):.1f} s, "
              f"update {m.get('timing_s/update_actor', 0):.1f} s; peak RSS MB by role: "
              f"{ {k: v['peak_rss_mb'] for k, v in res['roles'].items()} }", flush=True)
        return 0
    if not args.report:
        for point in args.points:  # a fresh process per point
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one", point, "--steps", str(args.steps),
                   "--micro", str(args.micro), "--tag", args.tag, "--out", args.out]
            rc = subprocess.run(cmd, cwd=ROOT).returncode
            if rc != 0:
                print(f"point {point} failed (exit {rc})", file=sys.stderr)
                return rc
    print(tables(args.out))
    for path in plot(args.out, PLOTS):
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
