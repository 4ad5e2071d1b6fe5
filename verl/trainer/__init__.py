"""Trainer: Hydra entry point and the PPO-family training loop."""
