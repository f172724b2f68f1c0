"""The Recycled module: its top's mode follows the wrapper's, from construction on."""

from __future__ import annotations

import torch

import layer_recycling as lr
from conftest import text_examples


def _dropout_modes(module: torch.nn.Module) -> set[bool]:
    return {m.training for m in module.modules() if isinstance(m, torch.nn.Dropout)}


def test_the_top_trains_in_train_mode_from_construction_on(bert):
    assert not bert.training  # from_pretrained and the fixture give eval mode
    rec = lr.recycle(bert, at=2)
    assert rec.training and _dropout_modes(rec.top) == {True} and _dropout_modes(rec.bottom) == {False}
    batch = next(iter(rec.loader(text_examples(), batch_size=6, progress=False)))
    with torch.no_grad():
        assert len({float(rec(**batch).loss) for _ in range(3)}) > 1  # dropout is on in the top
        rec.eval()
        assert _dropout_modes(rec.top) == {False}
        assert len({float(rec(**batch).loss) for _ in range(3)}) == 1
    rec.train()
    assert _dropout_modes(rec.top) == {True} and _dropout_modes(rec.bottom) == {False}
    assert not bert.training  # the user's model keeps its own mode
