"""Step metrics with verl's names: scores, advantages, lengths, throughput, per-source validation."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from verl.protocol import DataProto

DATASET_AVG = "dataset_avg"  # val/dataset_avg/<metric>: mean over data sources; val/overall/<metric>: over rows


def _stats(prefix: str, x: torch.Tensor) -> dict[str, float]:
    if x.numel() == 0:
        return {}
    x = x.float()
    return {f"{prefix}/mean": x.mean().item(), f"{prefix}/max": x.max().item(), f"{prefix}/min": x.min().item()}


def compute_data_metrics(batch: DataProto, use_critic: bool, max_response_length: int) -> dict[str, float]:
    t = batch.batch
    mask = t["response_mask"].bool()  # [B, R] policy tokens
    resp_len = t["attention_mask"][:, -t["responses"].shape[1]:].sum(-1).float()  # incl. observations
    prompt_len = t["attention_mask"][:, : -t["responses"].shape[1]].sum(-1).float()
    out: dict[str, float] = {}
    out.update(_stats("critic/score", t["token_level_scores"].sum(-1)))
    out.update(_stats("critic/rewards", t["token_level_rewards"].sum(-1)))
    out.update(_stats("critic/advantages", t["advantages"][mask]))
    out.update(_stats("critic/returns", t["returns"][mask]))
    if use_critic and "values" in t:
        out.update(_stats("critic/values", t["values"][mask]))
    out.update(_stats("response_length", resp_len))
    out["response_length/clip_ratio"] = (resp_len >= max_response_length).float().mean().item()
    out.update(_stats("response_length/policy_tokens", mask.sum(-1).float()))
    out.update(_stats("prompt_length", prompt_len))
    return out


def compute_throughput_metrics(batch: DataProto, step_time: float, n_workers: int) -> dict[str, float]:
    total = int(batch.batch["attention_mask"].sum().item())
    return {
        "perf/total_num_tokens": float(total),
        "perf/time_per_step": step_time,
        "perf/throughput": total / max(step_time, 1e-9) / max(n_workers, 1),  # tokens/s per worker, as verl
    }


def aggregate_by_source(per_sample: list[dict], sources, prefix: str = "val") -> dict[str, float]:
    """Mean of every numeric per-sample metric per data_source, plus row counts: `{prefix}/{source}/{metric}`,
    `{prefix}/{source}/count`; `{prefix}/overall/...`: the mean over all rows; `{prefix}/dataset_avg/{metric}`: the
    mean of the per-source means (the paper's "Avg": every dataset weighs the same, whatever its size), with
    `{prefix}/dataset_avg/datasets` the number of sources."""
    sources = list(sources)
    if len(per_sample) != len(sources):
        raise ValueError(f"aggregate_by_source got {len(per_sample)} metric dicts but {len(sources)} data sources")
    buckets: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    counts: dict[str, int] = defaultdict(int)
    for rec, src in zip(per_sample, sources):
        for group in (str(src), "overall"):
            counts[group] += 1
            for k, v in rec.items():
                if isinstance(v, (bool, int, float, np.floating, np.integer)):
                    buckets[group][k].append(float(v))
    out = {}
    for src, n in counts.items():
        for k, vals in buckets[src].items():
            out[f"{prefix}/{src}/{k}"] = float(np.mean(vals))
        out[f"{prefix}/{src}/count"] = float(n)
    datasets = [s for s in counts if s != "overall"]
    if datasets:
        for k in buckets["overall"]:
            means = [out[f"{prefix}/{s}/{k}"] for s in datasets if f"{prefix}/{s}/{k}" in out]
            out[f"{prefix}/{DATASET_AVG}/{k}"] = float(np.mean(means))
        out[f"{prefix}/{DATASET_AVG}/datasets"] = float(len(datasets))
    return out
