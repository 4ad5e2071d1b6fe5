"""Noise-probability curriculum: how often the simulator returns noisy (unhelpful) documents at a given step.

ZeroSearch raises the share of noisy search results as training goes on, so the policy first learns the
format and the use of search with mostly useful documents, then learns to cope with bad ones. With
ps = start_threshold, pe = end_threshold, b = base and m = total_steps, the probability at step s is:

    exponential (the paper's): p(s) = ps + (b**(s/m) - 1) / (b - 1) * (pe - ps)
    linear:                    p(s) = ps + s/m * (pe - ps)
    constant:                  p(s) = ps

and p(s) = pe for s >= m (except "constant"). The exponential schedule with b > 1 rises slowly at first and
fast near the end; 0 < b < 1 gives the opposite shape. `base` is ignored by the other schedules.

Departures / naming: the original calls this probability a "threshold" (START_THRESHOLD, END_THRESHOLD);
the config keeps those names for compatibility, but the value is a probability in [0, 1] of drawing a noisy
result, not a cut-off. start_threshold > end_threshold is allowed (a decreasing schedule); every schedule is
monotone between the two values. The original computed the value inline in the trainer; here it is a pure
function with validated, typed settings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from verl.utils.config_loader import from_dict

SCHEDULES = ("exponential", "linear", "constant")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass
class CurriculumConfig:
    """Typed curriculum settings (config section `curriculum`).

    schedule: "exponential" (paper), "linear" or "constant".
    start_threshold / end_threshold: noise probability at step 0 / at total_steps, each in [0, 1].
    base: exponential base b, > 0 and != 1 (paper: 4); ignored by "linear" and "constant".
    total_steps: m, the step at which end_threshold is reached; set it to trainer.total_training_steps.
    """

    schedule: str = "exponential"
    start_threshold: float = 0.0  # the shipped runs' value (the README's START_THRESHOLD 0)
    end_threshold: float = 0.5
    base: float = 4.0
    total_steps: int = 203

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, section: str = "curriculum") -> None:
        if self.schedule not in SCHEDULES:
            allowed = ", ".join(repr(s) for s in SCHEDULES)
            raise ValueError(f"{section}.schedule must be one of {allowed}, got {self.schedule!r}")
        for key in ("start_threshold", "end_threshold"):
            value = getattr(self, key)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"{section}.{key} must be a probability in [0, 1], got {value!r}; "
                    "it is the chance that a search returns noisy documents"
                )
            setattr(self, key, float(value))
        if not _is_number(self.base) or not math.isfinite(self.base):
            raise ValueError(f"{section}.base must be a finite number, got {self.base!r}")
        if self.schedule == "exponential" and (self.base <= 0 or self.base == 1):
            raise ValueError(
                f"{section}.base must be > 0 and != 1 for the exponential schedule, got {self.base!r}; "
                f"use base=4 (the paper's) or {section}.schedule=linear"
            )
        self.base = float(self.base)
        steps = self.total_steps
        if isinstance(steps, float) and steps.is_integer():
            steps = int(steps)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(
                f"{section}.total_steps must be an integer >= 1, got {self.total_steps!r}; "
                "set it to trainer.total_training_steps"
            )
        self.total_steps = steps

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None, section: str = "curriculum") -> CurriculumConfig:
        """Build from a mapping (dict / OmegaConf) with the shared loader; errors name `<section>.<key>`."""
        return from_dict(cls, cfg, f"{section}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def noise_probability(step: int | float, cfg: CurriculumConfig) -> float:
    """Noise probability at training step `step` (>= 0) under `cfg`; see the module docstring for formulas."""
    if not _is_number(step) or not math.isfinite(step) or step < 0:
        raise ValueError(f"curriculum step must be a finite number >= 0, got {step!r}")
    ps, pe = cfg.start_threshold, cfg.end_threshold
    if cfg.schedule == "constant":
        return ps
    if step >= cfg.total_steps:
        return pe
    frac = step / cfg.total_steps
    if cfg.schedule == "linear":
        progress = frac
    else:
        b = cfg.base
        progress = (b**frac - 1.0) / (b - 1.0)
    p = ps + progress * (pe - ps)
    lo, hi = min(ps, pe), max(ps, pe)
    return min(max(p, lo), hi)  # guard against float round-off outside [ps, pe]


class NoiseCurriculum:
    """Callable schedule: `NoiseCurriculum(cfg)(step)` is `noise_probability(step, cfg)`."""

    def __init__(self, cfg: CurriculumConfig | Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg if isinstance(cfg, CurriculumConfig) else CurriculumConfig.from_dict(cfg)

    def __call__(self, step: int | float) -> float:
        return noise_probability(step, self.cfg)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"NoiseCurriculum({c.schedule}, {c.start_threshold} -> {c.end_threshold}, "
            f"base={c.base}, total_steps={c.total_steps})"
        )
