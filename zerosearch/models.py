"""Model paths for ZeroSearch users: re-exports the resolver of the RL core.

The implementation lives in `verl.utils.models` because the trainer itself must resolve
`actor_rollout_ref.model.path=embedded`, and `verl` never imports `zerosearch`.
"""

from verl.utils.models import (  # noqa: F401
    EMBEDDED_ALIASES,
    cache_dir,
    embedded_model_dir,
    find_embedded_gguf,
    is_embedded,
    resolve_model_path,
)
