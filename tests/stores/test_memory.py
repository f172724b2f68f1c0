"""MemoryStore: the store verbs, codecs by name or dtype, first copy wins, volume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import layer_recycling as lr
from layer_recycling.stores.codecs import dequantize


def test_verbs():
    store = lr.MemoryStore()
    assert isinstance(store, lr.Store) and not isinstance(store, lr.SharedStore)
    store["a"] = torch.ones(3, 2)
    store.put_many(["b"], [torch.zeros(5, 2)])
    assert "a" in store and "z" not in store and len(store) == 2 and sorted(store) == ["a", "b"]
    assert store.contains_many(["b", "z", "a"]).tolist() == [True, False, True]
    assert [t.shape[0] for t in store.get_many(["b", "a"])] == [5, 3]  # ragged: no padding kept
    assert store.volume() == 8 * 2 * 4
    store.flush()
    with pytest.raises(KeyError, match="'z' is not in the store"):
        store["z"]
    with pytest.raises(TypeError, match="content digests"):
        store[3] = torch.ones(1)
    with pytest.raises(TypeError, match="store Protocol"):
        lr.recycle(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 1, store={})


def test_the_first_copy_of_a_key_wins():
    store = lr.MemoryStore()
    store.put_many(["a", "a"], [torch.ones(2, 2), torch.zeros(2, 2)])
    store["a"] = torch.full((2, 2), 7.0)
    assert torch.equal(store["a"], torch.ones(2, 2))


@pytest.mark.parametrize("codec, tol, size", [("float16", 1e-3, 2), ("bfloat16", 1e-2, 2), (torch.float16, 1e-3, 2),
                                              ("int8", 2e-2, 1), ("float32", 0.0, 4)])
def test_codecs_by_name_or_dtype_keep_close_values(codec, tol, size):
    store = lr.MemoryStore(codec=codec)
    x = torch.randn(5, 8)
    store["k"] = x
    assert store.codec == {"int8": "int8-outliers", torch.float16: "float16"}.get(codec, codec)
    assert store["k"].dtype == torch.float32 or codec in ("float16", "bfloat16", torch.float16)
    assert float((store.get_many(["k"], dtype=torch.float32)[0] - x).abs().max()) <= tol * 3
    assert store.volume() >= 5 * 8 * size
    (values, scales), = store.get_stored(["k"])  # as kept: int8 codes and side records, else the kept tensor
    assert values.dtype == (torch.int8 if codec == "int8" else store["k"].dtype)
    assert (scales is None) == (codec != "int8")
    assert torch.equal(dequantize(values, scales, torch.float32), store.get_many(["k"], dtype=torch.float32)[0])
    with pytest.raises(KeyError, match="'z' is not in the store"):
        store.get_stored(["k", "z"])


def test_bad_codecs_and_float16_overflow_are_explained():
    with pytest.raises(ValueError, match="MemoryStore\\(codec='float8'\\).*expected"):
        lr.MemoryStore(codec="float8")
    store = lr.MemoryStore(codec="float16")
    with pytest.raises(ValueError, match="beyond float16's range.*bfloat16"):
        store["big"] = torch.tensor([[1e6]])
    assert "big" not in store


def test_memory_and_null_stores_keep_input_digests_as_the_protocol_says():
    store = lr.MemoryStore()
    store.put_many(["a" * 40, "b" * 40], [torch.ones(2, 3)] * 2, checks=["c" * 40, None])
    store.put_many(["a" * 40], [torch.zeros(2, 3)], checks=["d" * 40])  # the first copy wins, with its check
    assert store.checks_many(["a" * 40, "b" * 40, "e" * 40]) == ["c" * 40, None, None]
    with pytest.raises(ValueError, match="2 keys, 2 values and 1 checks"):
        store.put_many(["a" * 40, "b" * 40], [torch.ones(2, 3)] * 2, checks=["c" * 40])
    assert lr.NullStore().checks_many(["a" * 40]) == [None]
