"""The train scripts' command line: original ZeroSearch command lines by key, defaults, exit codes."""

import subprocess
import sys
from pathlib import Path

import pytest

from zerosearch.launch import KEYS, UsageError, build_overrides, parse_args

ROOT = Path(__file__).resolve().parents[2]

# The original README's command line, with local paths.
ORIGINAL = ("NUM_GPUS_PER_NODE 4 MODEL_PATH /models/Qwen2.5-3B DATA_PATH /data/ZeroSearch_dataset TOTAL_STEPS 203 "
            "IP localhost SEARCH_MODE simulate_sft SIMULATION_LLM SearchSimulation_14B START_THRESHOLD 0 "
            "END_THRESHOLD 0.5").split()


def _ov(overrides):
    return dict(o.split("=", 1) for o in overrides)


def test_original_command_line_maps_to_overrides():
    ov = _ov(build_overrides(parse_args("grpo", ORIGINAL), gpu=True))
    assert ov["trainer.n_gpus_per_node"] == "4"
    assert ov["trainer.device"] == "cuda"
    assert ov["actor_rollout_ref.model.path"] == "/models/Qwen2.5-3B"
    assert ov["data.train_files"] == "[/data/ZeroSearch_dataset/train.parquet]"
    assert ov["data.val_files"] == "[/data/ZeroSearch_dataset/test.parquet]"
    assert ov["trainer.total_training_steps"] == "203"
    assert ov["search.ips"] == "[localhost]"
    assert ov["search.mode"] == "simulate_sft"
    assert ov["search.simulation_llm"] == "SearchSimulation_14B"
    assert ov["search.start_threshold"] == "0.0" and ov["search.end_threshold"] == "0.5"
    assert ov["algorithm.adv_estimator"] == "grpo"
    assert ov["actor_rollout_ref.actor.kl_loss_type"] == "low_var_kl"
    assert ov["trainer.experiment_name"] == "Qwen2.5-3B_grpo_simulate_sft_SearchSimulation_14B_0_0.5"


def test_any_order_same_result():
    pairs = [ORIGINAL[i:i + 2] for i in range(0, len(ORIGINAL), 2)]
    shuffled = [tok for pair in reversed(pairs) for tok in pair]
    assert build_overrides(parse_args("ppo", shuffled), gpu=True) == build_overrides(parse_args("ppo", ORIGINAL),
                                                                                     gpu=True)


def test_defaults_are_the_embedded_cpu_setup():
    ov = _ov(build_overrides(parse_args("grpo", []), gpu=False))
    assert ov["trainer.device"] == "cpu"
    assert ov["actor_rollout_ref.model.path"] == "embedded"
    assert ov["search.mode"] == "simulate_prompt"
    assert ov["search.val_mode"] == "local"
    assert ov["data.train_files"] == "[data/embedded/train.parquet]"


def test_algorithms_follow_the_original_scripts():
    ppo = _ov(build_overrides(parse_args("ppo", []), gpu=False))
    assert ppo["algorithm.adv_estimator"] == "gae" and ppo["algorithm.use_kl_in_reward"] == "true"
    assert ppo["actor_rollout_ref.rollout.n"] == "1"
    rf = _ov(build_overrides(parse_args("reinforce", []), gpu=False))
    assert rf["algorithm.adv_estimator"] == "reinforce" and rf["actor_rollout_ref.actor.use_kl_loss"] == "true"


def test_hydra_overrides_pass_through_last():
    ov = build_overrides(parse_args("grpo", ["TOPK", "5", "algorithm.gamma=0.9", "+foo.bar=1"]), gpu=False)
    assert ov[-2:] == ["algorithm.gamma=0.9", "+foo.bar=1"]
    assert "search.topk=5" in ov


@pytest.mark.parametrize("argv, needle", [(["FOO", "1"], "unknown key 'FOO'"), (["TOPK"], "TOPK has no value"),
                                          (["TOPK", "IP", "x"], "TOPK has no value")])
def test_bad_arguments(argv, needle):
    with pytest.raises(UsageError, match=needle):
        parse_args("grpo", argv)


def test_bad_number_names_the_key():
    with pytest.raises(UsageError, match="TOTAL_STEPS expects an integer"):
        build_overrides(parse_args("grpo", ["TOTAL_STEPS", "many"]), gpu=False)


def test_checkpoint_cadence_defaults():
    cpu = _ov(build_overrides(parse_args("grpo", []), gpu=False))  # a CPU step takes minutes: save every one
    assert cpu["trainer.save_freq"] == "1" and cpu["trainer.save_interval_minutes"] == "0.0"
    gpu = _ov(build_overrides(parse_args("grpo", ORIGINAL), gpu=True))
    assert gpu["trainer.save_freq"] == "203"
    ov = _ov(build_overrides(parse_args("grpo", ["SAVE_FREQ", "5", "SAVE_MINUTES", "30"]), gpu=False))
    assert ov["trainer.save_freq"] == "5" and ov["trainer.save_interval_minutes"] == "30.0"
    with pytest.raises(UsageError, match="SAVE_MINUTES expects a number"):
        build_overrides(parse_args("grpo", ["SAVE_MINUTES", "often"]), gpu=False)


def test_precision_follows_the_hardware_unless_given():
    from verl.workers.fsdp_utils import cpu_has_native_bf16

    key = "actor_rollout_ref.actor.fsdp_config.param_dtype"
    assert _ov(build_overrides(parse_args("grpo", []), gpu=True))[key] == "bf16"
    assert _ov(build_overrides(parse_args("grpo", []), gpu=False))[key] == ("bf16" if cpu_has_native_bf16() else "fp32")
    ov = _ov(build_overrides(parse_args("ppo", ["PRECISION", "fp32"]), gpu=True))
    assert ov[key] == ov["critic.fsdp_config.param_dtype"] == "fp32"
    with pytest.raises(UsageError, match="PRECISION must be"):
        build_overrides(parse_args("grpo", ["PRECISION", "fp8"]), gpu=False)


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    from verl.workers.fsdp_utils import cpu_has_native_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_native_bf16(str(info))
    info.write_text("flags\t\t: fpu avx2 avx512f\n")
    assert not cpu_has_native_bf16(str(info))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))


@pytest.mark.parametrize("script", ["train_grpo.sh", "train_ppo.sh", "train_reinforce.sh"])
def test_script_unknown_key_exits_2_with_the_list(script):
    r = subprocess.run(["bash", str(ROOT / script), "NOT_A_KEY", "1"], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert r.returncode == 2
    for key in KEYS:
        assert key in r.stderr


def test_script_dry_run_prints_the_trainer_command():
    r = subprocess.run(["bash", str(ROOT / "train_grpo.sh"), *ORIGINAL, "DRY_RUN", "true"], capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert r.returncode == 0, r.stderr
    assert "verl.trainer.main_ppo --config-name zerosearch" in r.stdout
    assert "search.mode=simulate_sft" in r.stdout


@pytest.mark.parametrize("word, expected", [("true", True), ("TRUE", True), ("1", True), ("Yes", True),
                                            ("false", False), ("0", False), ("NO", False), (" False ", False)])
def test_boolean_words(word, expected):
    from zerosearch.launch import parse_bool

    assert parse_bool(word, "VERBOSE") is expected


def test_console_keys_map_to_trainer_keys():
    ov = _ov(build_overrides(parse_args("grpo", []), gpu=False))
    assert ov["trainer.log_level"] == "WARNING" and ov["trainer.verbose"] == "false"
    ov = _ov(build_overrides(parse_args("grpo", ["LOG_LEVEL", "info", "VERBOSE", "yes", "VAL_BEFORE_TRAIN", "0"]),
                             gpu=False))
    assert ov["trainer.log_level"] == "INFO" and ov["trainer.verbose"] == "true"
    assert ov["trainer.val_before_train"] == "false"
    with pytest.raises(UsageError, match="LOG_LEVEL must be"):
        build_overrides(parse_args("grpo", ["LOG_LEVEL", "LOUD"]), gpu=False)


@pytest.mark.parametrize("key", ["VERBOSE", "DRY_RUN", "VAL_BEFORE_TRAIN"])
def test_a_bad_boolean_exits_2_naming_the_key(key, capsys):
    from zerosearch.launch import main

    assert main(["grpo", key, "maybe", "DRY_RUN" if key != "DRY_RUN" else "VERBOSE", "true"]) == 2
    assert f"{key} expects true/false (or 1/0, yes/no), got 'maybe'" in capsys.readouterr().err


def test_dry_run_1_is_a_dry_run(capsys):
    from zerosearch.launch import main

    assert main(["grpo", "DRY_RUN", "1"]) == 0  # `DRY_RUN 1` used to start training
    assert "verl.trainer.main_ppo --config-name zerosearch" in capsys.readouterr().out


def test_run_dir_follows_the_overrides(tmp_path):
    from zerosearch.launch import ROOT as LAUNCH_ROOT
    from zerosearch.launch import run_dir

    ov = build_overrides(parse_args("grpo", ["EXPERIMENT_NAME", "x"]), gpu=False)
    assert run_dir(ov) == LAUNCH_ROOT / "checkpoints" / "zerosearch" / "x"
    ov = build_overrides(parse_args("grpo", ["CHECKPOINT_DIR", str(tmp_path)]), gpu=False)
    assert run_dir(ov) == tmp_path
    assert run_dir([*ov, f"+trainer.default_local_dir={tmp_path / 'y'}"]) == tmp_path / "y"


def test_micro_batches_are_token_budgets_by_default():
    from verl.trainer.main_ppo import compose_config
    from zerosearch.launch import CPU_TOKEN_BUDGET

    cpu = build_overrides(parse_args("grpo", []), gpu=False)
    ov = _ov(cpu)
    assert ov["actor_rollout_ref.actor.use_dynamic_bsz"] == "true" and ov["critic.use_dynamic_bsz"] == "true"
    assert ov["actor_rollout_ref.actor.ppo_max_token_len_per_gpu"] == str(CPU_TOKEN_BUDGET)
    cfg = compose_config("zerosearch", cpu)  # the log-prob passes follow the actor's budget
    assert cfg.actor_rollout_ref.rollout.log_prob_use_dynamic_bsz
    assert cfg.actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu == CPU_TOKEN_BUDGET
    gpu = _ov(build_overrides(parse_args("grpo", ORIGINAL), gpu=True))
    assert gpu["actor_rollout_ref.actor.use_dynamic_bsz"] == "true"
    assert "actor_rollout_ref.actor.ppo_max_token_len_per_gpu" not in gpu  # the trainer's default (plan-checked)
    mine = build_overrides(parse_args("grpo", ["actor_rollout_ref.actor.use_dynamic_bsz=false"]), gpu=False)
    assert mine[-1] == "actor_rollout_ref.actor.use_dynamic_bsz=false"  # pass-through comes last and wins


def test_a_started_simulation_server_is_counted_by_the_memory_plan(monkeypatch):
    from types import SimpleNamespace

    from verl.utils.memory_plan import GB, SMOLLM2_135M, vllm_server_bytes
    from zerosearch.launch import SERVER_KV_GIB, _server_gb

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)  # the server gets SERVER_KV_GIB
    child = subprocess.Popen([sys.executable, "-c", "x = bytearray(300_000_000); print('held', flush=True); "
                              "import time; time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"  # the 300 MB are resident (a fixed sleep was flaky)
        server = SimpleNamespace(process=child)
        planned = vllm_server_bytes(SMOLLM2_135M, w=4, kv_gb=SERVER_KV_GIB) / GB
        assert _server_gb(server, "embedded", cpu=True) == pytest.approx(planned)  # the estimate when larger
        assert _server_gb(server, "/no/such/model", cpu=True) > 0.3  # no config.json: what it holds now
    finally:
        child.kill()
        child.wait()


def test_nnodes_joins_the_running_cluster():
    ov = _ov(build_overrides(parse_args("grpo", ["NNODES", "2", "NUM_GPUS_PER_NODE", "8"]), gpu=True))
    assert ov["trainer.nnodes"] == "2" and ov["trainer.n_gpus_per_node"] == "8"
    assert ov["trainer.ray_address"] == "auto"
    ov = build_overrides(parse_args("grpo", ["NNODES", "2", "trainer.ray_address=10.0.0.1:6379"]), gpu=True)
    assert [o for o in ov if o.startswith("trainer.ray_address=")] == ["trainer.ray_address=10.0.0.1:6379"]
    assert "trainer.ray_address" not in _ov(build_overrides(parse_args("grpo", []), gpu=True))


@pytest.mark.parametrize(("mode", "engine", "passed", "left_out"), [
    ("local", "local", {"corpus_path"}, {"port", "ips", "simulation_llm", "retriever_url"}),
    ("simulate_prompt", "local", {"port", "ips", "simulation_llm", "corpus_path"}, {"retriever_url"}),
    ("wiki", "wiki", {"retriever_url"}, {"port", "ips", "simulation_llm", "corpus_path"}),
])
def test_backend_keys_only_where_a_backend_reads_them(mode, engine, passed, left_out):
    """The rollout refuses a search key that no backend of the run reads (SEARCH_MODE local PORT 6002 once failed)."""
    from verl.trainer.main_ppo import compose_config

    ov = build_overrides(parse_args("grpo", ["SEARCH_MODE", mode, "SEARCH_ENGINE", engine, "PORT", "6002"]), gpu=False)
    keys = {o.split("=", 1)[0].removeprefix("search.") for o in ov if o.startswith("search.")}
    assert passed <= keys and not (left_out & keys), keys
    compose_config("zerosearch", ov)  # Hydra composes it: every key exists in the config


def test_a_trainer_killed_by_a_signal_is_named_with_how_to_resume(tmp_path, capsys):
    from zerosearch.launch import _trainer_exit

    overrides = [f"trainer.default_local_dir={tmp_path / 'run'}"]
    assert _trainer_exit(0, overrides, tmp_path / "train.log") == 0
    assert _trainer_exit(2, overrides, tmp_path / "train.log") == 2
    assert capsys.readouterr().err == ""
    assert _trainer_exit(-9, overrides, tmp_path / "train.log") == 137  # the shell's code, not 247
    err = capsys.readouterr().err
    assert "killed by SIGKILL" in err and "OOM" in err and "resume" in err and str(tmp_path / "run") in err
    assert _trainer_exit(-15, overrides, tmp_path / "train.log") == 143
