"""pipeline.py: the one object the stages take; they run on it alone, without the Recycled module."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import layer_recycling as lr
from layer_recycling import fill, loader, serve
from layer_recycling.pipeline import content_key, input_names_of
from conftest import text_examples, text_model
from helpers import max_diff, padded_batch


def test_the_stages_run_on_the_pipeline_alone():
    model = text_model("bert", "ForSequenceClassification").eval()
    rec = lr.recycle(model, at=2).eval()
    pipe = rec.pipeline
    assert pipe.bottom is rec.bottom and pipe.store is rec.store and pipe.stats is rec.stats and pipe.at == 2
    assert fill.fill(pipe, text_examples(6), progress=False) == 6 and len(rec.store) == 6
    batch = next(iter(loader.make_loader(pipe, text_examples(6), dtype=torch.float32, batch_size=6, progress=False)))
    assert batch["states"].shape[:2] == batch["attention_mask"].shape and rec.stats.bottom_examples == 6
    inputs = padded_batch(text_examples(6))
    states, mask, labels, layout = serve.prepare(pipe, torch.float32, inputs, {})
    with torch.no_grad():
        out = serve.restore(rec.top(states, attention_mask=mask, **labels), layout)
        assert max_diff(model(**inputs), out, inputs["attention_mask"]) <= 1e-5
    assert rec.stats.hits == 6 and rec.stats.bottom_examples == 6  # all from the store


def test_encode_keys_the_unpadded_inputs_and_names_the_labels():
    pipe = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2).pipeline
    ids = text_examples(1)[0]["input_ids"]
    key, inputs, labels = pipe.encode({"input_ids": ids + [0, 0], "attention_mask": [1] * len(ids) + [0, 0],
                                       "label": 2})
    assert key == pipe.encode({"input_ids": ids})[0]  # padding never counts
    assert inputs["input_ids"].tolist() == ids and labels["labels"].item() == 2


def test_input_names_are_the_bottoms_inputs_in_signature_order():
    bert = text_model("bert", "ForSequenceClassification")
    assert input_names_of(bert, generic=False) == ("input_ids", "attention_mask", "token_type_ids", "position_ids")
    mlp = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(4)])
    assert input_names_of(mlp, generic=True) == ("input",)


class DictOnly(dict):
    codec, fingerprint_parts = "native", None


def test_a_store_without_the_protocols_verbs_is_refused_naming_them():
    with pytest.raises(TypeError, match=r"missing: contains_many, get_many, get_stored, put_many, checks_many, flush, "
                                        r"volume, bind_fingerprint\)"):
        lr.recycle(text_model("bert", "ForSequenceClassification"), at=2, store=DictOnly())


class Minimal:
    """A user's store with the Protocol's verbs and nothing more: no flags, no dict sugar, no publishing."""

    codec, fingerprint_parts = "native", None

    def __init__(self):
        self.entries, self.checks = {}, {}

    def __len__(self):
        return len(self.entries)

    def contains_many(self, keys):
        return np.array([k in self.entries for k in keys], dtype=bool)

    def get_many(self, keys, device=None, dtype=None):
        return [self.entries[k].to(device=device, dtype=dtype) for k in keys]

    def get_stored(self, keys):
        return [(self.entries[k], None) for k in keys]

    def put_many(self, keys, values, checks=None):
        for k, v, c in zip(keys, values, checks or [None] * len(keys)):
            self.entries.setdefault(k, v.detach().cpu().clone())
            self.checks.setdefault(k, c)

    def checks_many(self, keys):
        return [self.checks.get(k) for k in keys]

    def flush(self):
        pass

    def volume(self):
        return sum(v.numel() * v.element_size() for v in self.entries.values())

    def bind_fingerprint(self, fingerprint):
        self.fingerprint_parts = self.fingerprint_parts or fingerprint.parts


def test_a_store_of_the_protocols_verbs_alone_fills_trains_and_serves_as_a_memory_store_does():
    """The Protocol is what the library calls: a store with those verbs only is filled, read by a loader and
    served from, with the results of a MemoryStore; it is neither a shared store nor one that keeps nothing."""
    examples = [{**e, "label": i % 2} for i, e in enumerate(text_examples(6))]
    results = []
    for store in (Minimal(), lr.MemoryStore()):
        torch.manual_seed(0)
        rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2, store=store).eval()
        assert rec.pipeline.keeps and not rec.pipeline.shared and not isinstance(store, lr.SharedStore)
        assert rec.fill(examples, progress=False) == 6 and rec.fill(examples, progress=False) == 0
        batch = next(iter(rec.loader(examples, batch_size=6, progress=False)))
        with torch.no_grad():
            results.append((rec(**batch).loss, rec(**padded_batch(examples)).logits))
        assert rec.stats.bottom_examples == 6 and rec.stats.hits == 6  # the bottom ran once per example
    assert all(float((a - b).abs().max()) <= 1e-6 for a, b in zip(*results))


def test_only_a_disk_store_is_a_shared_store(tmp_path):
    assert isinstance(lr.DiskStore(tmp_path / "s"), lr.SharedStore)
    assert not any(isinstance(s, lr.SharedStore) for s in (lr.MemoryStore(), lr.NullStore()))


def test_a_keyer_keys_as_the_pipeline_does_after_a_pickle_round_trip():
    """Ray tasks and DataLoader workers key examples with the pipeline's Keyer alone, without its model."""
    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2)
    keyer = pickle.loads(pickle.dumps(rec.pipeline.keyer))
    for example in text_examples(3):
        assert keyer.encode(example)[0] == rec.pipeline.encode(example)[0] == content_key(rec.encode(example)[1])


def test_a_bottom_changed_after_recycle_is_refused_before_the_store_is_read_or_written(tmp_path):
    """``rec.to(torch.bfloat16)`` once stored bfloat16 states under a float32 fingerprint, and a later float32
    model was served them; an in-place edit of a bottom weight likewise. A round trip that restores the same
    bytes (to float64 and back; to another device and back) is the same bottom and goes on."""
    examples = text_examples(4)
    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=2, store=lr.DiskStore(tmp_path / "s"))
    rec.fill(examples[:1], progress=False)
    rec.double().float()  # new tensors, the same bytes
    assert rec.fill(examples[1:2], progress=False) == 1
    weight = next(rec.bottom.parameters())
    with torch.no_grad():
        weight.view(-1)[0] += 1.0
    with pytest.raises(lr.FingerprintMismatch, match=r"changed after lr.recycle \(now float32.*in-place edit"):
        rec.fill(examples, progress=False)
    with torch.no_grad():
        weight.view(-1)[0] -= 1.0  # the same bytes again (weights of this size keep 1.0 exactly)
    assert rec.fill(examples[2:3], progress=False) == 1
    rec.to(torch.bfloat16)
    batch = padded_batch(examples)
    for call in (lambda: rec.fill(examples, progress=False), lambda: rec(**batch),
                 lambda: rec.predict(examples[:1], progress=False), lambda: rec.loader(examples, progress=False)):
        with pytest.raises(lr.FingerprintMismatch, match=r"changed after lr.recycle \(now bfloat16.*lr.recycle\(model"):
            call()
    rec.float()  # bfloat16 dropped bits: not the bottom the store was bound to
    with pytest.raises(lr.FingerprintMismatch, match="changed after lr.recycle"):
        rec(**batch)
    assert len(rec.store) == 3 and rec.stats.bottom_calls == 3  # nothing computed or stored since
