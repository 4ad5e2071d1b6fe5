"""Driver-side utilities: checkpoint pointer and pruning, secret redaction, resumable batches."""

import json

import pytest

from verl.utils import checkpoint as ckpt
from verl.utils.dataset import BatchIterator
from verl.utils.tracking import Tracking, redact


def _fake_step(root, step):
    d = ckpt.step_dir(root, step)
    (d / "actor").mkdir(parents=True)
    ckpt.mark_complete(root, step, {"global_step": step})


def test_latest_pointer_and_prune(tmp_path):
    assert ckpt.latest_step(tmp_path) is None
    for s in (1, 2, 3):
        _fake_step(tmp_path, s)
    ckpt.step_dir(tmp_path, 4).mkdir()  # a save in progress: no trainer_state.json, newer than latest
    assert ckpt.latest_step(tmp_path) == 3
    removed = ckpt.prune(tmp_path, keep=2)
    assert [p.name for p in removed] == ["global_step_1"]
    assert ckpt.step_dir(tmp_path, 4).exists()
    assert ckpt.resolve_resume(tmp_path, "auto", None) == ckpt.step_dir(tmp_path, 3)
    assert ckpt.resolve_resume(tmp_path, "disable", None) is None


def test_resume_path_must_be_complete(tmp_path):
    (tmp_path / "global_step_9").mkdir()
    with pytest.raises(FileNotFoundError, match="trainer.resume_from_path"):
        ckpt.resolve_resume(tmp_path, "resume_path", str(tmp_path / "global_step_9"))
    with pytest.raises(ValueError, match="resume_mode"):
        ckpt.resolve_resume(tmp_path, "sometimes", None)


def test_redact_hides_secrets_at_any_depth():
    cfg = {"search": {"serpapi_key": "sk-123", "topk": 3}, "wandb": {"api_key": "w"}, "x": [{"token": "t"}]}
    out = redact(cfg)
    assert "sk-123" not in json.dumps(out) and '"w"' not in json.dumps(out) and '"t"' not in json.dumps(out)
    assert out["search"]["topk"] == 3


def test_tracker_writes_redacted_config_and_jsonl(tmp_path):
    tr = Tracking("p", "e", ["jsonl"], {"search": {"serpapi_key": "secret-value"}}, str(tmp_path), total_steps=2)
    tr.log({"a": 1.0}, step=1)
    tr.finish()
    assert "secret-value" not in (tmp_path / "config.json").read_text()
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0]) == {"step": 1, "a": 1.0}


def test_batch_iterator_resumes_with_same_order():
    a = BatchIterator(10, 3, shuffle=True, seed=7)
    seq = [a.next()[0] for _ in range(5)]  # crosses an epoch (3 batches per epoch, last partial dropped)
    b = BatchIterator(10, 3, shuffle=True, seed=7)
    for _ in range(2):
        b.next()
    c = BatchIterator(10, 3, shuffle=True, seed=7)
    c.load_state_dict(b.state_dict())
    assert [c.next()[0] for _ in range(3)] == seq[2:]
    assert a.epoch == 1


def test_validation_pass_keeps_the_partial_batch():
    it = BatchIterator(125, 50, shuffle=False, drop_last=False)
    batches = list(it.epoch_batches())
    assert [len(b) for b in batches] == [50, 50, 25]


def test_train_batch_larger_than_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="data.train_batch_size"):
        BatchIterator(4, 8)
