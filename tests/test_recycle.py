"""recycle() end to end: every family and head, filled once and served from the store, equals the model.

What each stage does on its own is tested beside it: keys in test_keys, loaders in test_loader, serving in
test_serve, training and refusals of the module in test_model, ties in test_split, images in test_data."""

from __future__ import annotations

import pytest
import torch

import layer_recycling as lr
from conftest import LAYERS, TEXT_CASES, cnn_model, text_examples, text_model, vit_model
from helpers import max_diff, padded_batch

LEVELS = [0, 1, LAYERS // 2, LAYERS]


@pytest.mark.parametrize("family, head", TEXT_CASES)
@pytest.mark.parametrize("at", LEVELS)
def test_served_from_the_store_equals_the_model(family, head, at):
    model = text_model(family, head)
    examples = text_examples()
    batch = padded_batch(examples, pad_id=model.config.pad_token_id or 0)
    rec = lr.recycle(model, at=at).eval()
    rec.fill(examples, batch_size=4, progress=False)
    calls = rec.stats.bottom_calls
    with torch.no_grad():
        expected, actual = model(**batch), rec(**batch)
    assert rec.stats.bottom_calls == calls and rec.stats.hits == len(examples)  # the top ran on stored states
    assert max_diff(expected, actual, batch["attention_mask"]) <= 1e-5


@pytest.mark.parametrize("at", LEVELS)
def test_vit_served_from_the_store(at):
    model = vit_model()
    pixels = torch.randn(4, 3, 16, 16)
    rec = lr.recycle(model, at=at).eval()
    rec.fill([{"pixel_values": p, "labels": 1} for p in pixels], progress=False)
    with torch.no_grad():
        out = rec(pixel_values=pixels, labels=torch.ones(4, dtype=torch.long))
        assert max_diff(model(pixel_values=pixels, labels=torch.ones(4, dtype=torch.long)), out) <= 1e-5
    assert rec.stats.hits == 4 and rec.stats.misses == 0


@pytest.mark.parametrize("at", LEVELS)
def test_cnn_served_from_the_store_with_pair_examples(at):
    model, x = cnn_model(), torch.randn(6, 3, 8, 8)
    rec = lr.recycle(model, at=at).eval()
    assert rec.fill([(xi, i % 3) for i, xi in enumerate(x)], progress=False) == 6
    with torch.no_grad():
        assert max_diff(model(x), rec(x)) <= 1e-5
    assert rec.stats.hits == 6
