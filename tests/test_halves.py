"""halves.py: hand-built halves are shallow copies holding only what each half runs."""

from __future__ import annotations

import torch
from torch import nn

from layer_recycling import halves


class Tokens(nn.Module):
    """A ViT-like model: a stem, a token it concatenates in forward (a parameter), blocks, a norm and a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(3, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.blocks = nn.Sequential(*[nn.Linear(8, 8) for _ in range(4)])
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 2)


def test_a_cut_keeps_its_blocks_blanks_the_rest_and_shares_every_tensor():
    model = Tokens()
    bottom = halves._cut(model, "blocks", 1, halves._after(model, "blocks"), (), bottom=True)
    top = halves._cut(model, "blocks", 1, halves._before(model, "blocks"), ("cls",), bottom=False)
    assert len(bottom.blocks) == 1 and bottom.blocks[0] is model.blocks[0]
    assert isinstance(bottom.norm, nn.Identity) and isinstance(bottom.head, nn.Identity)
    assert len(top.blocks) == 3 and top.blocks[0] is model.blocks[1] and isinstance(top.stem, nn.Identity)
    assert "cls" not in dict(top.named_parameters()) and "cls" in dict(bottom.named_parameters())  # unset in the top
    assert {id(p) for p in bottom.parameters()}.isdisjoint(id(p) for p in top.parameters())
    assert len(model.blocks) == 4 and isinstance(model.norm, nn.LayerNorm) and "cls" in dict(model.named_parameters())


def test_steps_run_a_function_of_the_half():
    model = Tokens()
    step = halves.Steps(model, lambda m, x: m.head(m.norm(x)))
    x = torch.randn(2, 8)
    assert torch.equal(step(x), model.head(model.norm(x)))
    assert dict(step.named_parameters())["model.head.weight"] is model.head.weight
