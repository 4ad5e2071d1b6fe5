"""Worker-side checkpoints: sharded FSDP2 training state and the Hugging Face export.

`save_sharded` / `load_sharded` (collectives: every rank calls them):
- model and optimizer state go through torch.distributed.checkpoint (DCP) as sharded DTensor state
  dicts into `<dir>/dcp/`, so a run may resume on a different number of ranks;
- the LR scheduler, a step counter and the RNG states (python, numpy, torch, cuda) go to
  `<dir>/extra_state_rank<r>.pt` per rank (RNG is restored only when the rank file exists).
Atomicity of a whole step directory is the driver's job (verl.utils.checkpoint writes the `latest`
pointer only after every part is saved).

`save_hf` (rank 0, given the gathered full state dict): `config.json` (without quantization_config),
the generation config, the tokenizer and safetensors weights (sharded at 5 GB with an index, as
`save_pretrained` does; a tied lm_head is left out), written to a temp dir and renamed, so the result is
loadable by `AutoModelForCausalLM.from_pretrained` and vLLM.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from verl.utils.faults import fault_point
from verl.utils.models import resolve_model_path

logger = logging.getLogger(__name__)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_sharded(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                 scheduler: Any | None = None, extra: dict[str, Any] | None = None) -> None:
    """Save this rank's shards of model/optimizer (DCP) and its scheduler/RNG/extra state."""
    directory = Path(directory)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(directory / "dcp", ignore_errors=True)  # never mix shards of two saves
    _barrier()
    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    dcp.save(state, checkpoint_id=str(directory / "dcp"))
    fault_point("save_checkpoint", (extra or {}).get("step"))  # the tests' mid-save kill
    local = {"rng": _rng_state(), "extra": extra or {},
             "scheduler": scheduler.state_dict() if scheduler is not None else None}
    torch.save(local, directory / f"extra_state_rank{rank}.pt")
    _barrier()
    logger.info("rank %d saved a sharded checkpoint to %s", rank, directory)


def load_sharded(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                 scheduler: Any | None = None) -> dict[str, Any]:
    """Restore what `save_sharded` wrote (in place); returns the saved `extra` dict of this rank (or rank 0's)."""
    directory = Path(directory)
    if not (directory / "dcp").is_dir():
        raise FileNotFoundError(f"{directory} holds no sharded checkpoint (no dcp/ directory); check "
                                "trainer.resume_from_path / trainer.default_local_dir")
    rank = dist.get_rank() if dist.is_initialized() else 0
    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    dcp.load(state, checkpoint_id=str(directory / "dcp"))
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optim"])
    own = directory / f"extra_state_rank{rank}.pt"
    path = own if own.exists() else directory / "extra_state_rank0.pt"
    local = torch.load(path, weights_only=False)
    if scheduler is not None and local.get("scheduler") is not None:
        scheduler.load_state_dict(local["scheduler"])
    if own.exists():
        _set_rng_state(local["rng"])
    else:
        logger.warning("no RNG state for rank %d in %s (world size changed?): RNG not restored", rank, directory)
    _barrier()
    return local.get("extra", {})


def save_hf(state_dict: dict[str, torch.Tensor], out_dir: str | Path, model_path: str,
            max_shard_size: str = "5GB") -> Path:
    """Write an HF model directory from full weights (call on one rank). Returns the directory."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    src = resolve_model_path(model_path)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        config = AutoConfig.from_pretrained(src)
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.save_pretrained(tmp)
        try:
            GenerationConfig.from_pretrained(src).save_pretrained(tmp)
        except OSError:
            logger.info("%s has no generation config; none exported", src)
        AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        if getattr(config, "tie_word_embeddings", False):
            tensors.pop("lm_head.weight", None)
        seen: set[int] = set()
        for k, v in tensors.items():  # safetensors refuses shared storage
            if v.untyped_storage().data_ptr() in seen:
                tensors[k] = v = v.clone()
            seen.add(v.untyped_storage().data_ptr())
        split = split_torch_state_dict_into_shards(tensors, filename_pattern="model{suffix}.safetensors",
                                                   max_shard_size=max_shard_size)
        for filename, names in split.filename_to_tensors.items():
            save_file({n: tensors[n] for n in names}, str(tmp / filename), metadata={"format": "pt"})
        if split.is_sharded:
            index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported an HF model to %s", out_dir)
    return out_dir
