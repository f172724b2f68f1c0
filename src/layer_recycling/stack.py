"""Stacked fills: a store filled at level j feeds the fill at level k > j, so only blocks j..k run.

A sweep over 25/50/75% then costs one pass of the deepest bottom. The lower model must be the same model
recycled at a lower level, with a lossless store: its states stand exactly for the first j blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from . import data
from .fill import compute, device_of, dtype_of, missing
from .fingerprint import FingerprintMismatch, fingerprint_of
from .split import middle, split

if TYPE_CHECKING:
    from .model import Recycled

LOSSLESS = ("native", "float32")


def stacked_states(rec: Recycled, lower: Recycled, pending: dict[str, dict], batch_size: int,
                   progress: bool) -> Callable[[list[str], list[dict]], list[torch.Tensor]]:
    """``states_of(keys, rows)`` for ``fill.compute``: lower's stored states run through blocks j..k."""
    check_stackable(rec, lower)
    compute(lower, missing(lower, pending.items()), batch_size, progress)  # the lower store first, if incomplete
    blocks = middle(rec.source, lower.at, rec.at, rec.config.blocks).eval()
    device, dtype = device_of(rec.bottom), dtype_of(rec.bottom)

    @torch.no_grad()
    def states_of(keys: list[str], rows: list[dict]) -> list[torch.Tensor]:
        states = lower.store.get_many(keys, device=device, dtype=dtype)
        rec.stats.bottom_calls += 1
        rec.stats.bottom_examples += len(keys)
        if not rec.arch.masked:
            return list(blocks(torch.stack(states)))
        lengths = [s.shape[0] for s in states]
        out = blocks(data.pad(states), data.mask_for(lengths, max(lengths), device))
        return [out[i, :n] for i, n in enumerate(lengths)]

    return states_of


def check_stackable(rec: Recycled, lower: Recycled) -> None:
    """Refuse a lower model that is not this model's first j blocks with an exact store.

    Raises:
        ValueError: not a lower level, a lossy store, or another key function.
        FingerprintMismatch: the lower store was filled by another bottom.
    """
    if not lower.at < rec.at:
        raise ValueError(f"start_from recycles {lower.at} blocks, this model {rec.at}: start from a lower level")
    if not lower.store.keeps or lower.store.codec not in LOSSLESS:
        raise ValueError(
            f"start_from's store is {lower.store!r} (codec {lower.store.codec!r}): a stacked fill needs exact states "
            f"(a codec in {LOSSLESS}); fill this level from scratch instead"
        )
    if lower.key_fn is not rec.key_fn:
        raise ValueError("start_from keys examples with another key function; use the same key= for both levels")
    s = split(rec.source, lower.at, rec.config.blocks)
    own = fingerprint_of(s.bottom, model=rec.source, at=s.at, num_layers=s.num_layers, blocks=s.arch.blocks,
                         codec=lower.store.codec).parts
    parts = [p for p in ("model", "config", "split", "weights") if lower.fingerprint.parts.get(p) != own[p]]
    parts += ["preprocess"] if lower.fingerprint.parts.get("preprocess") != rec.fingerprint.parts.get("preprocess") else []
    if parts:
        raise FingerprintMismatch(
            f"start_from was recycled from a different model ({', '.join(parts)} differ): its {lower.at} stored "
            f"blocks are not this model's first {lower.at}. Recycle the same model at the lower level"
        )
