"""ZeroSearch: RL that teaches an LLM to search, paid for by a simulation LLM instead of a search API.

Everything about search lives here (multi-turn rollouts, search backends, reward, curriculum, data);
the RL core lives in `verl`, which never imports this package.
"""
