"""DataProto: construction checks, row operations on tensors and objects together, pickling."""

import pickle

import numpy as np
import pytest
import torch

from verl.protocol import DataProto


def make(n: int = 6) -> DataProto:
    return DataProto.from_dict(
        tensors={"ids": torch.arange(n * 3).reshape(n, 3), "score": torch.arange(n, dtype=torch.float32)},
        non_tensors={"uid": [f"u{i}" for i in range(n)], "answers": [["a", str(i)] for i in range(n)]},
        meta_info={"temperature": 1.0},
    )


def rows(d: DataProto) -> list[int]:
    return [int(x) for x in d.batch["score"].tolist()]


def test_from_dict_keeps_list_elements_whole_and_checks_lengths():
    d = make(4)
    assert len(d) == 4
    assert d.non_tensor_batch["answers"].dtype == object and d.non_tensor_batch["answers"].shape == (4,)
    assert d.non_tensor_batch["answers"][2] == ["a", "2"]
    with pytest.raises(ValueError, match="'uid'"):
        DataProto.from_dict(tensors={"ids": torch.zeros(3, 2)}, non_tensors={"uid": ["a", "b"]})
    with pytest.raises(ValueError, match="'b'"):
        DataProto.from_dict(tensors={"a": torch.zeros(3), "b": torch.zeros(2)})
    with pytest.raises(ValueError, match="'x'"):
        DataProto.from_dict(tensors={"x": [1, 2]})
    assert len(DataProto()) == 0


def test_getitem_int_slice_list_tensor_mask():
    d = make(6)
    one = d[2]
    assert len(one) == 1 and rows(one) == [2] and one.non_tensor_batch["uid"][0] == "u2"
    assert rows(d[-1]) == [5]
    assert rows(d[1:4]) == [1, 2, 3]
    picked = d[[4, 0, 4]]
    assert rows(picked) == [4, 0, 4] and list(picked.non_tensor_batch["uid"]) == ["u4", "u0", "u4"]
    assert rows(d[torch.tensor([3, 1])]) == [3, 1]
    assert rows(d[np.array([5])]) == [5]
    mask = torch.tensor([True, False, True, False, False, True])
    assert list(d[mask].non_tensor_batch["uid"]) == ["u0", "u2", "u5"]
    assert picked.meta_info == {"temperature": 1.0}
    with pytest.raises(IndexError):
        d[6]
    with pytest.raises(IndexError):
        d[[0, 7]]


def test_select_and_pop():
    d = make(3)
    s = d.select(batch_keys=["ids"], non_tensor_keys=["uid"])
    assert set(s.batch) == {"ids"} and set(s.non_tensor_batch) == {"uid"}
    assert set(d.select().batch) == {"ids", "score"}
    with pytest.raises(KeyError, match="missing"):
        d.select(batch_keys=["missing"])
    popped = d.pop(batch_keys=["score"], non_tensor_keys=["answers"])
    assert set(popped.batch) == {"score"} and set(popped.non_tensor_batch) == {"answers"}
    assert set(d.batch) == {"ids"} and set(d.non_tensor_batch) == {"uid"}
    assert len(d.pop()) == 0 and set(d.batch) == {"ids"}


def test_union_merges_and_rejects_conflicts():
    d = make(3)
    other = DataProto.from_dict(tensors={"ids": d.batch["ids"].clone(), "values": torch.ones(3)},
                                non_tensors={"uid": ["u0", "u1", "u2"]}, meta_info={"temperature": 1.0, "step": 2})
    out = d.union(other)
    assert out is d and set(d.batch) == {"ids", "score", "values"} and d.meta_info["step"] == 2
    bad = DataProto.from_dict(tensors={"score": torch.zeros(3)})
    with pytest.raises(ValueError, match="'score'"):
        make(3).union(bad)
    with pytest.raises(ValueError, match="'uid'"):
        make(3).union(DataProto.from_dict(non_tensors={"uid": ["u0", "u1", "X"]}))
    with pytest.raises(ValueError, match="'temperature'"):
        make(3).union(DataProto(meta_info={"temperature": 0.5}))
    with pytest.raises(ValueError, match="lengths"):
        make(3).union(make(4).select(batch_keys=["ids"], non_tensor_keys=[]))


def test_chunk_concat_roundtrip_and_split():
    d = make(6)
    parts = d.chunk(3)
    assert [rows(p) for p in parts] == [[0, 1], [2, 3], [4, 5]]
    back = DataProto.concat(parts)
    assert torch.equal(back.batch["ids"], d.batch["ids"])
    assert list(back.non_tensor_batch["uid"]) == list(d.non_tensor_batch["uid"])
    assert back.non_tensor_batch["answers"][5] == ["a", "5"]
    with pytest.raises(ValueError, match="pad_to_divisor"):
        d.chunk(4)
    assert [len(p) for p in d.split(4)] == [4, 2]
    with pytest.raises(ValueError, match="keys"):
        DataProto.concat([make(2), make(2).select(batch_keys=["ids"])])
    with pytest.raises(ValueError):
        DataProto.concat([])


def test_concat_meta_info_first_wins():
    a, b = make(1), make(1)
    a.meta_info, b.meta_info = {"x": 1}, {"x": 2, "y": 3}
    assert DataProto.concat([a, b]).meta_info == {"x": 1, "y": 3}


def test_repeat_interleaved_and_tiled():
    d = make(2)
    inter = d.repeat(3, interleave=True)
    assert rows(inter) == [0, 0, 0, 1, 1, 1]
    assert list(inter.non_tensor_batch["uid"]) == ["u0", "u0", "u0", "u1", "u1", "u1"]
    assert torch.equal(inter.batch["ids"][4], d.batch["ids"][1])
    tiled = d.repeat(2, interleave=False)
    assert rows(tiled) == [0, 1, 0, 1] and list(tiled.non_tensor_batch["uid"]) == ["u0", "u1", "u0", "u1"]
    assert tiled.non_tensor_batch["answers"][3] == ["a", "1"]


def test_reorder_is_in_place_permutation():
    d = make(4)
    d.reorder(torch.tensor([2, 0, 3, 1]))
    assert rows(d) == [2, 0, 3, 1] and list(d.non_tensor_batch["uid"]) == ["u2", "u0", "u3", "u1"]
    with pytest.raises(ValueError, match="permutation"):
        d.reorder([0, 0, 1, 2])


def test_pad_to_divisor_and_unpad():
    d = make(5)
    padded, pad = d.pad_to_divisor(4)
    assert pad == 3 and rows(padded) == [0, 1, 2, 3, 4, 0, 1, 2]
    assert list(padded.non_tensor_batch["uid"][5:]) == ["u0", "u1", "u2"]
    assert rows(padded.unpad(pad)) == rows(d)
    small, pad = make(2).pad_to_divisor(5)  # more padding than rows: cycles through them
    assert pad == 3 and rows(small) == [0, 1, 0, 1, 0]
    same, pad = d.pad_to_divisor(5)
    assert pad == 0 and rows(same) == rows(d)
    with pytest.raises(ValueError):
        d.unpad(6)


def test_pickle_roundtrip_and_chunks_ship_only_their_rows():
    big = DataProto.from_dict(tensors={"x": torch.randn(64, 512)}, non_tensors={"uid": [str(i) for i in range(64)]},
                              meta_info={"k": "v"})
    back = pickle.loads(pickle.dumps(big))
    assert torch.equal(back.batch["x"], big.batch["x"]) and list(back.non_tensor_batch["uid"]) == list(
        big.non_tensor_batch["uid"]) and back.meta_info == {"k": "v"}
    full = len(pickle.dumps(big))
    part = big.chunk(8)[3]
    blob = pickle.dumps(part)
    assert len(blob) < full / 4
    assert torch.equal(pickle.loads(blob).batch["x"], big.batch["x"][24:32])


def test_save_load_and_to(tmp_path):
    d = make(3).to("cpu")
    d.save(str(tmp_path / "batch.pt"))
    loaded = DataProto.load(str(tmp_path / "batch.pt"))
    assert torch.equal(loaded.batch["ids"], d.batch["ids"])
    assert loaded.non_tensor_batch["answers"][1] == ["a", "1"] and loaded.meta_info == d.meta_info
    assert "len=3" in repr(d)
