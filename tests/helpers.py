"""Shared test helpers: padded batches and output comparison on real (unpadded) positions."""

from __future__ import annotations

import torch


def padded_batch(examples: list[dict], pad_id: int = 0, extra: int = 2) -> dict[str, torch.Tensor]:
    """Right-pad examples to the longest plus ``extra`` columns, as a tokenizer with padding would."""
    t = max(len(e["input_ids"]) for e in examples) + extra
    ids = torch.full((len(examples), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), t), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
        mask[i, : len(e["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask}


def tensors_of(output) -> dict[str, torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return {"output": output}
    return {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}


def max_diff(expected, actual, mask: torch.Tensor | None = None) -> float:
    """Largest abs difference over all tensor outputs; per-token outputs are compared where mask is 1."""
    want, got = tensors_of(expected), tensors_of(actual)
    assert want.keys() <= got.keys(), f"missing outputs: {want.keys() - got.keys()}"
    worst = 0.0
    for name, a in want.items():
        b = got[name]
        assert a.shape == b.shape, f"{name}: shape {tuple(b.shape)} != expected {tuple(a.shape)}"
        if mask is not None and a.dim() >= 2 and a.shape[:2] == mask.shape:
            keep = mask.bool()
            a, b = a[keep], b[keep]
        worst = max(worst, float((a - b).abs().max()) if a.numel() else 0.0)
    return worst
