"""The multi-turn search rollout: the policy thinks, searches, reads documents and answers.

Layout (one concern per module):
- `config.py`: `GenerationConfig`, every knob of the loop, validated once;
- `actions.py`: how a search is written (`<search>` tags or a `search` tool call) and parsed;
- `observation.py`: the token ids the framework inserts (documents, the corrective message), masked out of the loss;
- `base.py`: `SearchRollout`, what every mode shares (trajectories as token ids, the rules of one turn, the output
  batch and its metrics) and the registry of modes (`register_rollout_mode`);
- `lockstep.py` ("sync"): all rows turn by turn, the reference; `agent_loop.py` ("async"): each trajectory at its
  own pace on vLLM's AsyncLLM;
- `factory.py`: the trainer's component (`rollout_fn.target=zerosearch.rollout:make_rollout_fn`): the `search`
  config section -> a rollout function with its training and validation backends.

A rollout mode is called as `rollout(batch, engine, params, step) -> DataProto` and closed with `close()`.
"""

from __future__ import annotations

from zerosearch.rollout.agent_loop import AgentLoopRollout
from zerosearch.rollout.base import (
    ROLLOUT_MODES,
    SearchRollout,
    Trajectory,
    register_rollout_mode,
    rollout_metrics,
    trajectory_records,
)
from zerosearch.rollout.config import GenerationConfig
from zerosearch.rollout.factory import make_search_rollout_fn, rollout_mode
from zerosearch.rollout.lockstep import LockstepRollout

make_rollout_fn = make_search_rollout_fn  # the trainer's factory name (rollout_fn.target)

__all__ = ["ROLLOUT_MODES", "AgentLoopRollout", "GenerationConfig", "LockstepRollout", "SearchRollout", "Trajectory",
           "make_rollout_fn", "make_search_rollout_fn", "register_rollout_mode", "rollout_metrics", "rollout_mode",
           "trajectory_records"]
