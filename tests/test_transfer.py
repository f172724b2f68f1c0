"""transfer.py: batches for an accelerator, read ahead, sent at their stored size, converted on the device."""

from __future__ import annotations

import threading

import pytest
import torch

import layer_recycling as lr
from layer_recycling.batches import SCALES, collate_states
from layer_recycling.transfer import DeviceLoader, read_ahead
from conftest import vit_model
from helpers import bert_classifier, labelled_examples


@pytest.mark.parametrize("codec, workers", [("float16", 0), ("float16", 2), ("int8", 0), ("bfloat16", 0)])
def test_device_batches_equal_the_plain_loaders_and_cross_at_their_stored_size(tmp_path, codec, workers):
    rec = lr.recycle(bert_classifier(), at=2, store=lr.DiskStore(tmp_path / "s", codec=codec))
    examples = labelled_examples()
    plain = list(rec.loader(examples, batch_size=3, progress=False))
    moved = rec.loader(examples, batch_size=3, progress=False, device="cpu", num_workers=workers)
    assert len(moved) == len(plain) == 3 and moved.dataset is moved.loader.dataset
    crossing = next(iter(moved.loader))  # what crosses the bus: the stored bytes (int8: codes and side records)
    assert crossing["states"].dtype == getattr(torch, codec)
    assert (SCALES in crossing) == (codec == "int8")
    if codec == "int8":  # per token: its scale, its 4 kept values and their columns
        assert crossing[SCALES].shape == (*crossing["attention_mask"].shape, 9)
        assert crossing[SCALES].dtype == torch.float32 and not crossing[SCALES][crossing["attention_mask"] == 0].any()
    got = list(moved)
    for a, b in zip(plain, got, strict=True):
        assert a.keys() == b.keys() and b["states"].dtype == torch.float32
        assert all(torch.equal(a[k], b[k]) for k in a)  # converted on the device exactly as on the host
    assert rec.stats.bottom_examples == 8  # filled once, by the first loader


def test_int8_in_memory_and_fixed_length_states_are_converted_on_the_device():
    model = vit_model()
    images = [{"pixel_values": torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(i)), "labels": i % 3}
              for i in range(5)]
    rec = lr.recycle(model, at=1, store=lr.MemoryStore(codec="int8"))
    plain = list(rec.loader(images, batch_size=2, progress=False))
    moved = rec.loader(images, batch_size=2, progress=False, device="cpu")
    crossing = next(iter(moved.loader))
    assert crossing["states"].dtype == torch.int8 and crossing[SCALES].shape == (*crossing["states"].shape[:2], 9)
    for a, b in zip(plain, moved, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        expected = model.eval()(pixel_values=torch.stack([x["pixel_values"] for x in images[:2]])).logits
        served = rec.eval()(**next(iter(moved))).logits
    assert (expected - served).abs().max() < 0.05  # int8's error, not a wrong row


@pytest.mark.parametrize("codec", ["float16", "int8"])
def test_examples_of_several_inputs_reach_the_device_field_by_field(tmp_path, codec):
    rec = lr.recycle(bert_classifier(), at=2, store=lr.DiskStore(tmp_path / "s", codec=codec))
    texts = [{k: v for k, v in e.items() if k != "label"} for e in labelled_examples()]
    pairs = [{"anchor": texts[i], "positive": texts[(i + 1) % 8], "labels": i % 2} for i in range(8)]
    plain = list(rec.loader(pairs, batch_size=4, inputs=["anchor", "positive"], progress=False))
    moved = rec.loader(pairs, batch_size=4, inputs=["anchor", "positive"], progress=False, device="cpu")
    crossing = next(iter(moved.loader))
    assert crossing["anchor"]["states"].dtype == getattr(torch, codec)  # stored size on the bus
    assert (SCALES in crossing["positive"]) == (codec == "int8")
    for a, b in zip(plain, moved, strict=True):
        assert b["anchor"]["states"].dtype == b["positive"]["states"].dtype == torch.float32
        assert all(a[f].keys() == b[f].keys() for f in ("anchor", "positive"))
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


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_int8_with_outliers_converts_on_the_device_exactly_as_on_the_host(tmp_path, device):
    """Codes and side records cross as stored; the device's batch equals the host's decoded and padded one."""
    store = lr.DiskStore(tmp_path / "s", codec="int8")
    g = torch.Generator().manual_seed(0)
    keys = [lr.digest(i) for i in range(6)]
    states = [torch.randn(n, 32, generator=g) for n in (4, 1, 6, 3, 5, 2)]
    for s in states:  # outlier channels on every token, a massive first token
        s[:, 7] += 30.0
        s[0, 11] = 2000.0
    store.put_many(keys, states)
    store.flush()
    batches = torch.utils.data.DataLoader([keys[:3], keys[3:]], batch_size=None, pin_memory=device == "cuda",
                                          collate_fn=lambda b: collate_states(store.get_stored(b), ragged=True))
    for names, batch in zip([keys[:3], keys[3:]], DeviceLoader(batches, device, torch.float32), strict=True):
        host = collate_states(store.get_many(names, dtype=torch.float32), ragged=True)
        assert batch["states"].device.type == device and torch.equal(batch["states"].cpu(), host["states"])
        assert batch["states"][:, 0, 11].eq(2000.0).all()  # kept exactly, beside the others to 1/254 of ~3
