"""The trainer's reward component for search QA: `reward_fn.target=zerosearch.reward_fn:make_reward_fn`.

Scores the decoded *response only* (`response_text`, never prompt + response; the search rollout's `format_text`
when the batch has it: the same with each inserted span reduced to its `<information>` block) against the row's
ground truth with `zerosearch.reward`, configured by the `reward` config section (metric f1|em|substring,
format_penalty, format_reward, strict_format). Per-sample em / f1 / substring are returned under their
own names, so validation reports all three per data_source; `answer` is the extracted answer (a string, or None
without `<answer>`), which evaluation records and metric aggregation skips.
"""

from __future__ import annotations

from collections.abc import Callable

from verl.protocol import DataProto
from zerosearch.reward import RewardConfig, extract_answer, score_batch


def check_config(config, **_) -> None:
    """The trainer's start-up check: the `reward` section, before Ray starts."""
    RewardConfig.from_dict(getattr(config, "reward", None) or {})


def make_reward_fn(config, tokenizer=None, **_) -> Callable:
    rcfg = RewardConfig.from_dict(getattr(config, "reward", None) or {})

    def reward(batch: DataProto):
        nt = batch.non_tensor_batch
        gts = nt["ground_truth"] if "ground_truth" in nt else nt["golden_answers"]
        fmt = list(nt["format_text"]) if "format_text" in nt else None  # the search rollout's (see rollout/base.py)
        scores, per = score_batch(list(nt["response_text"]), list(gts), list(nt["data_source"]), rcfg, fmt)
        keep = ("score", "em", "f1", "substring", "format_ok", "has_answer")
        answers = [extract_answer(r) for r in (fmt or nt["response_text"])]
        return scores, [{**{k: float(p[k]) for k in keep if k in p}, "answer": a} for p, a in zip(per, answers)]

    return reward
