"""transfer.py: batches for an accelerator, read ahead, sent at their stored size, converted on the device."""

from __future__ import annotations

import threading

import pytest
import torch

import layer_recycling as lr
from layer_recycling.transfer import read_ahead
from helpers import bert_classifier, labelled_examples


@pytest.mark.parametrize("workers", [0, 2])
def test_device_batches_equal_the_plain_loaders_and_cross_at_their_stored_size(tmp_path, workers):
    rec = lr.recycle(bert_classifier(), at=2, store=lr.DiskStore(tmp_path / "s", codec="float16"))
    examples = labelled_examples()
    plain = list(rec.loader(examples, batch_size=3, progress=False))
    moved = rec.loader(examples, batch_size=3, progress=False, device="cpu", num_workers=workers)
    assert len(moved) == len(plain) == 3 and moved.dataset is moved.loader.dataset
    assert next(iter(moved.loader))["states"].dtype == torch.float16  # what crosses the bus: the stored bytes
    got = list(moved)
    for a, b in zip(plain, got):
        assert a.keys() == b.keys() and b["states"].dtype == torch.float32
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert rec.stats.bottom_examples == 8  # filled once, by the first loader


def test_examples_of_several_inputs_reach_the_device_field_by_field(tmp_path):
    rec = lr.recycle(bert_classifier(), at=2, store=lr.DiskStore(tmp_path / "s", codec="float16"))
    texts = [{k: v for k, v in e.items() if k != "label"} for e in labelled_examples()]
    pairs = [{"anchor": texts[i], "positive": texts[(i + 1) % 8], "labels": i % 2} for i in range(8)]
    plain = list(rec.loader(pairs, batch_size=4, inputs=["anchor", "positive"], progress=False))
    moved = rec.loader(pairs, batch_size=4, inputs=["anchor", "positive"], progress=False, device="cpu")
    assert next(iter(moved.loader))["anchor"]["states"].dtype == torch.float16  # stored size on the bus
    for a, b in zip(plain, moved, strict=True):
        assert b["anchor"]["states"].dtype == b["positive"]["states"].dtype == torch.float32
        assert all(torch.equal(a[f][k], b[f][k]) for f in ("anchor", "positive") for k in a[f])
        assert torch.equal(a["labels"], b["labels"])


def test_device_batches_follow_the_samplers_epoch(tmp_path):
    rec = lr.recycle(bert_classifier(), at=2)
    moved = rec.loader(labelled_examples(), batch_size=2, shuffle=True, group_by_length=True, seed=1,
                       progress=False, device="cpu")
    orders = []
    for epoch in (0, 1):
        moved.batch_sampler.set_epoch(epoch)
        orders.append([b["labels"].tolist() for b in moved])
    assert orders[0] != orders[1] and sorted(sum(orders[0], [])) == sorted(sum(orders[1], []))


def test_read_ahead_raises_the_error_where_it_happened_and_stops_when_the_consumer_does():
    def batches():
        yield 1
        yield 2
        raise ValueError("store read failed")

    seen = []
    with pytest.raises(ValueError, match="store read failed"):
        for b in read_ahead(batches(), depth=2):
            seen.append(b)
    assert seen == [1, 2]
    endless = read_ahead(iter(range(10**9)), depth=2)
    assert next(endless) == 0
    endless.close()  # the consumer stops: the thread ends too
    assert not [t for t in threading.enumerate() if t.name == "layer-recycling-read-ahead"]
