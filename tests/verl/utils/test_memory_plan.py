"""The memory plan: arithmetic against hand-computed numbers, the auto adjustment, strict and nothing-fits refusals
(before Ray or any model starts), fp32 vs bf16, and the per-step measurement helpers."""

import json
import logging
import subprocess
import sys
import time

import pytest

from verl.trainer.config import ConfigError, load_config
from verl.utils import memory_usage
from verl.utils.memory_fit import apply_memory_plan, plan_config
from verl.utils.memory_plan import GB, GIB, HOST_SLACK, RUNTIME, SMOLLM2_135M, Budget, ModelDims, model_dims
from verl.utils.memory_usage import machine_budget, machine_ram

P135 = 134_515_008  # SmolLM2-135M: 30 x 3,540,096 (q, k, v, o, MLP, 2 norms) + 49152 x 576 + 576
SEQ, RESP = 512 + 128, 128


def _cfg(**sections):
    """A one-rank CPU config of the embedded model: 4 prompts x 2 samples, micro-batch 4 rows of 640 tokens."""
    c = {"data": {"max_prompt_length": 512, "max_response_length": 128, "train_batch_size": 4},
         "actor_rollout_ref": {"actor": {"ppo_mini_batch_size": 4, "ppo_micro_batch_size_per_gpu": 4,
                                         "fsdp_config": {"param_dtype": "fp32"}},
                               "rollout": {"n": 2, "kv_cache_space_gb": 1.0}},
         "trainer": {"device": "cpu", "n_gpus_per_node": 1}}
    for path, value in sections.items():
        *parents, leaf = path.split("__")
        node = c
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return load_config(c)


def _actor_parts(cfg):
    return plan_config(cfg, "cpu", SMOLLM2_135M).get("actor").parts


def test_dims_of_the_embedded_model_and_of_a_config_json(tmp_path):
    assert SMOLLM2_135M.params() == P135
    assert model_dims("embedded").params() == P135  # the converted config.json, or the built-in dims before it
    qwen = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(qwen))
    d = model_dims(str(tmp_path))
    layer = 2 * 896 * 896 + 2 * 896 * 128 + 3 * 896 * 4864 + 2 * 896 + (896 + 2 * 128)  # q/o, k/v, MLP, norms, bias
    assert d.qkv_bias and d.layer_params() == layer
    assert d.params() == 24 * layer + 151936 * 896 + 896  # Qwen2.5-0.5B: 494,032,768
    assert d.params() == 494_032_768
    del qwen["vocab_size"]
    (tmp_path / "config.json").write_text(json.dumps(qwen))
    with pytest.raises(ValueError, match="lacks vocab_size"):
        model_dims(str(tmp_path))
    assert model_dims(str(tmp_path / "not-downloaded")) is None


def test_actor_process_by_hand():
    parts = _actor_parts(_cfg())
    tokens = 4 * SEQ  # 4 rows of 640 tokens, all 512 response positions scored
    per_token_fp32 = 30 * (52 * 576 + 8 * 192 + 16 * 1536)  # 1,681,920 bytes
    assert parts["params+grads 8P/N"] == 8 * P135 and parts["adam 8P/N"] == 8 * P135
    assert parts["runtime"] == RUNTIME["worker"] + RUNTIME["vllm_client"]
    assert parts["update/activations"] == tokens * per_token_fp32
    assert parts["update/gathered"] == 4 * (49152 * 576 + 576 + 2 * 3_540_096)
    # chunked head: one chunk of 512 positions x V x 12 bytes, the kept hidden states and their gradient, the fp32
    # gradient of the (tied) output embedding
    assert parts["update/head"] == 512 * 49152 * 12 + 4 * RESP * 576 * 4 * 2 + 49152 * 576 * 4
    assert parts["update/backward"] == 3 * 49152 * 576 * 4
    assert parts["update/no-sync grads"] == 4 * P135  # 2 micro-batches per mini-batch: unsharded fp32 gradients


def test_micro_batch_budget_reference_and_ranks():
    full = _actor_parts(_cfg(actor_rollout_ref__actor__entropy_from_logits_with_chunking=False))
    assert full["update/head"] == 4 * RESP * 49152 * 14  # every response position x V x 14 bytes
    two_rows = _actor_parts(_cfg(actor_rollout_ref__actor__use_dynamic_bsz=True,
                                 actor_rollout_ref__actor__ppo_max_token_len_per_gpu=2 * SEQ + 100))
    assert two_rows["update/activations"] == (2 * SEQ + 100) * 30 * 56064  # the budget bounds the tokens
    one_row = _actor_parts(_cfg(actor_rollout_ref__actor__use_dynamic_bsz=True,
                                actor_rollout_ref__actor__ppo_max_token_len_per_gpu=10))
    assert one_row["update/activations"] == SEQ * 30 * 56064  # a row longer than the budget goes alone
    kl = _cfg(actor_rollout_ref__actor__use_kl_loss=True)
    assert _actor_parts(kl)["reference 4P/N"] == 4 * P135
    two = plan_config(_cfg(trainer__n_gpus_per_node=2), "cpu", SMOLLM2_135M)
    assert two.get("actor").count == 2 and two.get("actor").parts["adam 8P/N"] == 4 * P135
    assert two.get("actor").parts["update/activations"] == 4 * SEQ * 30 * 56064  # micro-batch = 4 rows per rank


def test_engines_server_and_critic():
    base = plan_config(_cfg(), "cpu", SMOLLM2_135M)
    more_kv = plan_config(_cfg(actor_rollout_ref__rollout__kv_cache_space_gb=3.0), "cpu", SMOLLM2_135M)
    assert more_kv.get("rollout").host - base.get("rollout").host == pytest.approx(2 * GIB)
    assert base.get("rollout").parts["worker"] > RUNTIME["vllm_worker"] + 3 * 4 * P135 + GIB  # weights, repack, mmap
    hf = plan_config(_cfg(actor_rollout_ref__rollout__name="hf"), "cpu", SMOLLM2_135M)
    assert hf.get("rollout") is None and hf.get("actor").parts["hf engine weights"] == 4 * P135
    server = plan_config(_cfg(trainer__colocated_server_gb=2.5), "cpu", SMOLLM2_135M)
    assert server.total - base.total == pytest.approx(2.5 * GB)
    # Ray's monitor counts RAM without page cache: the libraries mapped by each Python process (driver, actor,
    # vLLM's two) and the weight file the vLLM worker maps during a sync
    assert base.machine == pytest.approx(base.total - RUNTIME["file_backed"] * 4 - 4 * P135)
    ppo = plan_config(_cfg(algorithm__adv_estimator="gae", actor_rollout_ref__rollout__n=1,
                           critic__ppo_micro_batch_size_per_gpu=2), "cpu", SMOLLM2_135M)
    critic = ppo.get("critic")
    assert critic.parts["states 16P/N"] == 16 * SMOLLM2_135M.value_params()
    assert "update/head" not in critic.parts and critic.parts["update/activations"] == 2 * SEQ * 30 * 56064


def test_fp32_activations_are_larger_than_bf16():
    fp32, bf16 = _actor_parts(_cfg()), _actor_parts(_cfg(actor_rollout_ref__actor__fsdp_config__param_dtype="bf16"))
    assert bf16["update/activations"] == 4 * SEQ * 30 * (28 * 576 + 4 * 192 + 12 * 1536)
    assert fp32["update/activations"] >= 1.5 * bf16["update/activations"]  # 56 vs 35 kB per token per layer
    ckpt = _actor_parts(_cfg(actor_rollout_ref__model__enable_gradient_checkpointing=True))
    assert ckpt["update/activations"] == 4 * SEQ * (30 * 20 * 576 + 56064)  # layer inputs + one layer recomputed
    assert SMOLLM2_135M.act_token(4, False) / SMOLLM2_135M.act_token(4, True) > 4


def _limit_for(cfg, **changes) -> float:
    """trainer.memory_limit_gb that the config fits exactly once `changes` are applied."""
    from verl.utils.memory_fit import _set

    return plan_config(_set(cfg, changes), "cpu", SMOLLM2_135M).machine / GB


def test_auto_lowers_the_token_budget_in_one_log_line(caplog):
    cfg = _cfg()
    limit = _limit_for(cfg, **{"actor_rollout_ref.actor.use_dynamic_bsz": True,
                               "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": 2 * SEQ + 200})
    cfg.trainer.memory_limit_gb = limit
    with caplog.at_level(logging.INFO):
        plan = apply_memory_plan(cfg, "cpu")
    a = cfg.actor_rollout_ref.actor
    assert a.use_dynamic_bsz and 2 * SEQ <= a.ppo_max_token_len_per_gpu <= 2 * SEQ + 200
    assert a.ppo_max_token_len_per_gpu % 64 == 0 and not cfg.actor_rollout_ref.model.enable_gradient_checkpointing
    assert plan.fits and plan.machine <= limit * GB
    lines = [r.getMessage() for r in caplog.records if r.name == "verl.utils.memory_fit"]
    assert len(lines) == 1
    assert f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={a.ppo_max_token_len_per_gpu}" in lines[0]
    assert "actor_rollout_ref.actor.use_dynamic_bsz=true" in lines[0]


def test_auto_turns_on_checkpointing_when_two_rows_do_not_fit():
    cfg = _cfg()
    one_row = {"actor_rollout_ref.actor.use_dynamic_bsz": True, "actor_rollout_ref.actor.ppo_max_token_len_per_gpu":
               SEQ}
    limit = _limit_for(cfg, **one_row) + 0.05  # one row fits without checkpointing, two rows do not
    cfg.trainer.memory_limit_gb = limit
    apply_memory_plan(cfg, "cpu")
    assert cfg.actor_rollout_ref.model.enable_gradient_checkpointing
    a = cfg.actor_rollout_ref.actor
    assert not a.use_dynamic_bsz or a.ppo_max_token_len_per_gpu >= 2 * SEQ  # more than the one row it had without
    assert plan_config(cfg, "cpu", SMOLLM2_135M, Budget(limit * GB)).fits


def test_strict_refuses_and_names_the_keys():
    cfg = _cfg(trainer__memory_plan="strict")
    cfg.trainer.memory_limit_gb = _limit_for(cfg, **{"actor_rollout_ref.actor.use_dynamic_bsz": True,
                                                     "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": 2 * SEQ})
    with pytest.raises(ConfigError) as e:
        apply_memory_plan(cfg, "cpu")
    msg = str(e.value)
    assert "trainer.memory_plan=auto would set actor_rollout_ref.actor.use_dynamic_bsz=true, " \
           f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={2 * SEQ}" in msg
    # alone: 4 rows of P' + 128 tokens in what 2 x 640 tokens take (less: 512 scored positions, not 256)
    lowered = int(msg.split("lower data.max_prompt_length from 512 to <= ")[1].split(";")[0])
    assert 150 < lowered < 192 and "trainer.memory_plan=off" in msg
    for prompt, fits in ((lowered, True), (lowered + 1, False)):  # the largest that fits
        assert plan_config(_cfg(data__max_prompt_length=prompt), "cpu", SMOLLM2_135M,
                           Budget(cfg.trainer.memory_limit_gb * GB)).fits is fits
    assert not cfg.actor_rollout_ref.actor.use_dynamic_bsz  # strict changes nothing


def test_nothing_fits_fails_before_ray_or_any_model():
    import ray

    from verl.trainer.main_ppo import run
    from verl.utils.memory_fit import _minimal, _set

    cfg = _cfg(data__max_response_length=2048, data__max_prompt_length=1024)
    least = plan_config(_set(cfg, _minimal(cfg)), "cpu", SMOLLM2_135M).machine
    cfg.trainer.memory_limit_gb = (least - 0.3 * GB) / GB  # 0.3 GB short even at one row with checkpointing
    with pytest.raises(ConfigError) as e:
        run(cfg)
    assert not ray.is_initialized()
    msg = str(e.value)
    assert "even with gradient checkpointing and one longest row (3072 tokens) per micro-batch" in msg
    lowered = int(msg.split("lower data.max_response_length from 2048 to <= ")[1].split(";")[0])
    for resp, fits in ((lowered, True), (lowered + 1, False)):  # the largest that fits
        c = _set(cfg, {"data.max_response_length": resp})
        assert plan_config(_set(c, _minimal(c)), "cpu", SMOLLM2_135M, Budget(cfg.trainer.memory_limit_gb * GB)).fits \
            is fits
    # activations + a scored hidden state and its gradient, plus the allocator's slack on a phase
    per_token = (SMOLLM2_135M.act_token(4, True) + 2 * 576 * 4) * HOST_SLACK
    assert 2048 - lowered == pytest.approx(0.3 * GB / per_token, abs=2)
    assert "lower actor_rollout_ref.rollout.kv_cache_space_gb from 1 to <= 0.5" in msg  # 0.3 GB = 0.28 GiB less
    assert "raise trainer.memory_limit_gb" in msg


def test_off_skips_the_plan_and_the_keys_are_checked():
    cfg = _cfg(trainer__memory_plan="off", trainer__memory_limit_gb=0.1)
    assert apply_memory_plan(cfg, "cpu") is None and not cfg.actor_rollout_ref.actor.use_dynamic_bsz
    for bad, needle in (({"memory_plan": "maybe"}, "trainer.memory_plan"), ({"memory_limit_gb": 0.0},
                        "trainer.memory_limit_gb"), ({"colocated_server_gb": -1.0}, "trainer.colocated_server_gb")):
        with pytest.raises(ConfigError, match=needle):
            load_config({"trainer": bad})


def test_the_machine_budget_follows_ray_threshold(monkeypatch):
    monkeypatch.setenv("RAY_memory_usage_threshold", "0.5")
    b = machine_budget(_cfg(), "cpu")
    assert "Ray kill threshold 0.5" in b.source and b.others >= 0 and b.host == pytest.approx(machine_ram() * 0.5)
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "0")
    assert "threshold 1" in machine_budget(_cfg(), "cpu").source
    assert machine_budget(_cfg(trainer__memory_limit_gb=3.0), "cpu") == Budget(3 * GB, "trainer.memory_limit_gb")


def test_a_dense_config_for_a_qwen_sized_model_scales():
    d = ModelDims("q", 2048, 11008, 36, 16, 2, 151936, True, True)
    cfg = _cfg(data__max_prompt_length=512, data__max_response_length=1536)
    plan = plan_config(cfg, "cpu", d)
    assert plan.get("actor").parts["update/head"] > 512 * 151936 * 12  # one chunk of the 152k vocabulary
    assert plan.get("actor").parts["update/head"] < 4 * 1536 * 151936 * 14 / 4  # a quarter of the full logits


def test_peaks_follow_a_child_process_and_step_metrics():
    import psutil

    others = [p.pid for p in psutil.Process().children(recursive=True)]  # e.g. the session's vLLM server

    def child_gb() -> float:  # the children's peaks less those of the processes that were there before
        before = sum(memory_usage.peak_rss(p) for p in others) / memory_usage.GB
        return memory_usage.read_peaks()["children_rss"] - before

    child = subprocess.Popen([sys.executable, "-c", "x = bytearray(400_000_000); import time; time.sleep(2); "
                                                    "del x; time.sleep(30)"])
    try:
        time.sleep(1.5)
        assert child_gb() > 0.35  # GB, the child's high-water mark
        time.sleep(1.5)
        memory_usage.reset_peaks()  # resets the child's high-water mark too
        assert child_gb() < 0.2
    finally:
        child.kill()
        child.wait()
    m = memory_usage.step_metrics({"rss": 0.5, "children_rss": 0.0}, [{"rss": 4.0, "children_rss": 3.0},
                                  {"rss": 5.0, "children_rss": 2.5}], None, {"perf/max_memory_planned_gb/actor": 6.0})
    assert m["perf/max_memory_rss_gb/actor"] == 5.0 and m["perf/max_memory_rss_gb/rollout"] == 3.0
    assert m["perf/max_memory_rss_gb/total"] == 0.5 + 4 + 3 + 5 + 2.5
    assert m["perf/max_memory_planned_gb/actor"] == 6.0 and "perf/max_memory_rss_gb/critic" not in m


def test_cuda_plan_is_per_gpu_and_offload_moves_states_to_the_host():
    d = ModelDims("q", 2048, 11008, 36, 16, 2, 151936, True, True)
    P = d.params()
    cfg = _cfg(trainer__device="cuda", trainer__n_gpus_per_node=4, data__train_batch_size=8,
               actor_rollout_ref__actor__ppo_mini_batch_size=8, actor_rollout_ref__rollout__gpu_memory_utilization=0.4,
               actor_rollout_ref__actor__fsdp_config__param_dtype="auto")  # bf16 on CUDA
    plan = plan_config(cfg, "cuda", d, Budget(gpu=80 * GB))
    actor, rollout = plan.get("actor"), plan.get("rollout")
    assert rollout.gpu == 0.4 * 80 * GB + RUNTIME["cuda_context"]  # vLLM takes its fraction of the GPU
    assert actor.parts["adam 8P/N"] == 8 * P / 4 and actor.parts["update/gathered"] == 2 * (d.root_params() + 2 *
                                                                                          d.layer_params())
    assert plan.gpu_total == actor.gpu + rollout.gpu and plan.fits == (plan.gpu_total <= 80 * GB)
    off = plan_config(_set_all(cfg, **{"actor_rollout_ref.actor.fsdp_config.param_offload": True}), "cuda", d,
                      Budget(gpu=80 * GB))  # FSDP2's CPU offload: parameters, gradients and Adam states
    assert off.get("actor").gpu == pytest.approx(actor.gpu - 16 * P / 4)
    assert off.get("actor").host == pytest.approx(actor.host + 16 * P / 4)
    assert "perf/max_memory_planned_gb/gpu" in plan.metrics()


def _set_all(cfg, **changes):
    from verl.utils.memory_fit import _set

    return _set(cfg, changes)
