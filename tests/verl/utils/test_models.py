"""Model path resolution: pass-through, the embedded aliases, and a race-safe one-time conversion."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from verl.utils.models import is_embedded, resolve_model_path


def test_other_paths_pass_through():
    assert resolve_model_path("Qwen/Qwen2.5-3B") == "Qwen/Qwen2.5-3B"
    assert resolve_model_path("/models/llama") == "/models/llama"
    with pytest.raises(ValueError, match="actor_rollout_ref.model.path"):
        resolve_model_path("")


def test_aliases():
    assert is_embedded("embedded") and is_embedded("embedded://smollm2-135m-instruct")
    assert not is_embedded("embedded-model")


@pytest.mark.slow
def test_two_processes_convert_once_into_a_loadable_dir(tmp_path):
    """Two processes race on an empty cache: one converts under the lock, both get the same complete dir."""
    code = "from verl.utils.models import resolve_model_path; print(resolve_model_path('embedded://smollm2-135m-instruct'))"
    env = {**__import__("os").environ, "ZEROSEARCH_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    d = Path(outs[0])
    assert d.parent == tmp_path / "models"
    assert [p.name for p in d.parent.iterdir() if p.is_dir()] == [d.name]  # no temp dir left behind
    cfg = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_contiguous_lm_head_input_keeps_the_logits(embedded_model_path):
    """The hook only changes the memory layout of the lm_head input: a frozen model's kept logits are unchanged."""
    import torch
    from transformers import AutoModelForCausalLM

    from verl.utils.models import contiguous_lm_head_input

    model = AutoModelForCausalLM.from_pretrained(embedded_model_path, dtype=torch.float32).eval()
    model.requires_grad_(False)
    ids = torch.randint(0, 1000, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(input_ids=ids).logits[:, -5:]
        plain = model(input_ids=ids, logits_to_keep=5).logits
        contiguous_lm_head_input(model)
        assert len(model.get_output_embeddings()._forward_pre_hooks) == 1
        hooked = model(input_ids=ids, logits_to_keep=5).logits
    torch.testing.assert_close(hooked, full, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-4)
