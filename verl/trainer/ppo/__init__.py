"""PPO-family algorithms: pure tensor math (core_algos) and the Ray driver loop."""
