"""NullStore: the store API with nothing kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import layer_recycling as lr
from conftest import cnn_model


def test_null_store_keeps_nothing():
    store = lr.NullStore()
    assert isinstance(store, lr.Store) and not lr.recycle(cnn_model(), at=1, store=store).pipeline.keeps
    store.put_many(["a"], [torch.ones(1)])
    store["b"] = torch.ones(1)
    assert len(store) == 0 and "a" not in store and list(store) == [] and store.volume() == 0
    assert np.array_equal(store.contains_many(["a", "b"]), [False, False])
    for read in (store.get_many, store.get_stored):
        with pytest.raises(KeyError, match="NullStore keeps nothing"):
            read(["a"])
