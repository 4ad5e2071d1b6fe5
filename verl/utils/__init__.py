"""Utilities of the RL core: datasets, tracking, checkpoints, timing, model paths."""
