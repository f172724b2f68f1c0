"""Training loaders: labels all-or-none, clear refusals, and the same batches from a store or from inputs."""

from __future__ import annotations

import pytest
import torch

import layer_recycling as lr
from layer_recycling.loader import input_loader
from conftest import text_examples


def test_mixing_labelled_and_unlabelled_examples_names_the_example(bert):
    examples = text_examples(4)
    del examples[2]["label"]
    rec = lr.recycle(bert, at=2)
    with pytest.raises(ValueError, match="example 2 has no labels, but example 0 has \\['labels'\\]"):
        rec.loader(examples, progress=False)
    assert rec.stats.bottom_calls == 0  # refused before any work


def test_an_empty_loader_and_drop_last_with_grouping_are_explained(bert):
    rec = lr.recycle(bert, at=2)
    with pytest.raises(ValueError, match="got no examples"):
        rec.loader([], progress=False)
    with pytest.raises(ValueError, match="drop_last=True.*group_by_length=True.*Drop drop_last"):
        rec.loader(text_examples(), group_by_length=True, drop_last=True, progress=False)


def test_input_loader_batches_a_whole_model_like_the_recycled_loader(bert):
    examples = text_examples(8)
    full = list(input_loader(bert, examples, batch_size=4, seed=0, shuffle=True))
    rec = lr.recycle(bert, at=2).eval()
    recycled = list(rec.loader(examples, batch_size=4, seed=0, shuffle=True, progress=False))
    assert [b["labels"].tolist() for b in full] == [b["labels"].tolist() for b in recycled]
    assert all(torch.equal(a["attention_mask"], b["attention_mask"]) for a, b in zip(full, recycled))
    with torch.no_grad():  # the same batch: the whole model's loss on inputs equals the top's on stored states
        assert abs(float(bert(**full[0]).loss) - float(rec(**recycled[0]).loss)) <= 1e-5


def test_grouped_sampler_follows_set_epoch():
    from layer_recycling.data import LengthGroupedBatches

    sampler = LengthGroupedBatches(list(range(40)), 4, shuffle=True, seed=3)
    sampler.set_epoch(5)
    first = list(sampler)
    sampler.set_epoch(5)
    assert list(sampler) == first
    sampler.set_epoch(6)
    assert list(sampler) != first


def test_a_sampler_or_batch_sampler_of_your_own_is_used(bert):
    examples = [dict(e, label=i) for i, e in enumerate(text_examples(6))]
    rec = lr.recycle(bert, at=2)
    batches = list(rec.loader(examples, batch_sampler=[[5, 0], [2, 3, 4]], progress=False))
    assert [b["labels"].tolist() for b in batches] == [[5, 0], [2, 3, 4]]
    ordered = list(rec.loader(examples, batch_size=3, sampler=[4, 3, 2, 1, 0, 5], progress=False))
    assert [b["labels"].tolist() for b in ordered] == [[4, 3, 2], [1, 0, 5]]
