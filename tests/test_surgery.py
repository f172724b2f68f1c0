"""surgery.py: the block count a level means, and shallow copies that share every tensor."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import layer_recycling as lr
from layer_recycling import surgery


@pytest.mark.parametrize(
    "at, layers, expected",
    [(0.5, 6, 3), (0.25, 6, 2), (0.75, 6, 4), (0.25, 12, 3), (0.5, 12, 6), (0.75, 12, 9), (0.25, 24, 6),
     (0.01, 6, 1), (0.99, 6, 5), (0.0, 6, 0), (1.0, 6, 6), (0, 6, 0), (6, 6, 6), (3, 6, 3), (0.5, 1, 0)],
)
def test_levels_round_to_blocks(at, layers, expected):
    assert lr.resolve_at(at, layers) == expected


@pytest.mark.parametrize("at, error, words", [
    (7, ValueError, "0..6"), (-1, ValueError, "0..6"), (1.5, ValueError, "[0, 1]"), (2.0, ValueError, "int 2"),
    (True, TypeError, "bool"), ("half", TypeError, "str"),
])
def test_bad_levels_are_refused_with_the_fix(at, error, words):
    with pytest.raises(error, match=None) as info:
        lr.resolve_at(at, 6)
    assert words in str(info.value)


def test_replace_copies_only_the_edited_path_and_shares_every_tensor():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 1))
    edited = surgery.replace(model, {"1.1": nn.Identity()})
    assert isinstance(model[1][1], nn.ReLU) and isinstance(edited[1][1], nn.Identity)  # the original is unchanged
    assert edited[1] is not model[1] and edited[0] is model[0] and edited[2] is model[2]  # only the path is copied
    assert edited[1][0].weight is model[1][0].weight
    x = torch.randn(3, 2)
    assert torch.equal(edited(x), model[2](model[1][0](model[0](x))))


def test_get_and_join_read_dotted_paths():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2)))
    assert surgery.get(model, "") is model and surgery.get(model, "0.0") is model[0][0]
    assert surgery.join("", "a", "", "b") == "a.b"
    with pytest.raises(AttributeError):
        surgery.get(model, "0.1")
