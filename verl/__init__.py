"""verl-style RL core: batch container, algorithms, Ray worker groups, FSDP2 workers, rollout engines, trainer.

Knows nothing about search: the rollout and reward functions are components named in the config.
"""
