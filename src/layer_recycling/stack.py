"""Stacked fills: a store filled at level j feeds the fill at level k > j, so only blocks j..k run.

A sweep over 25/50/75% then costs one pass of the deepest bottom. The lower pipeline must be the same model
recycled at a lower level, with a lossless store: its states stand exactly for the first j blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch

from . import batches
from .fill import keyed, size_of, stream
from .fingerprint import FingerprintMismatch, fingerprint_of
from .pipeline import StatesOf, autocast, dtype_of
from .split import middle, split
from .stores.codecs import LOSSLESS

if TYPE_CHECKING:
    from .pipeline import Pipeline



def fill(pipe: Pipeline, lower: Pipeline, examples: Iterable[Any], batch_size: int = 32, progress: bool = True,
         group: Any = None) -> int:
    """``fill.fill`` of ``pipe`` from ``lower``'s stored states: ``lower``'s store is filled first where it lacks
    an example this fill needs, then blocks j..k run on its states. Returns the entries ``pipe`` added."""
    if not pipe.keeps:
        return 0
    check_stackable(pipe, lower)
    states_of = stacked_states(pipe, lower)

    def step(chunk: list[tuple[str, dict]], mine: Callable[[dict], dict], locate: Callable[[str], str]) -> int:
        pending = mine(pipe.missing(chunk))  # what this level lacks; the lower level computes what it lacks of it
        lower.compute(mine(lower.missing(list(pending.items()))), batch_size, locate=locate)
        return pipe.compute(pending, batch_size, states_of, locate)  # a key's owner stored its lower state

    return stream([lower, pipe], keyed(pipe, examples), step, progress, group, total=size_of(examples))


def stacked_states(pipe: Pipeline, lower: Pipeline) -> StatesOf:
    """``states_of(keys, rows)`` for ``Pipeline.compute``: lower's stored states run through blocks j..k."""
    blocks = middle(pipe.source, lower.at, pipe.at, pipe.options.blocks).eval()
    device, dtype = pipe.device, dtype_of(pipe.bottom)

    @torch.no_grad()
    def states_of(keys: list[str], rows: list[dict]) -> list[torch.Tensor]:
        pipe.check_bottom()
        states = lower.store.get_many(keys, device=device, dtype=dtype)
        pipe.stats.bottom_calls += 1
        pipe.stats.bottom_examples += len(keys)
        with autocast(pipe.options.autocast, device):  # as the bottom of this level runs them
            if not pipe.arch.masked:
                return list(blocks(batches.stack(states, "states")))
            out = blocks(*batches.repad(states))
        return [out[i, : s.shape[0]] for i, s in enumerate(states)]

    return states_of


def check_stackable(pipe: Pipeline, lower: Pipeline) -> None:
    """Refuse a lower pipeline that is not this model's first j blocks with an exact store.

    Raises:
        ValueError: not a lower level, a lossy store, or another key function.
        FingerprintMismatch: the lower store was filled by another bottom.
    """
    if not lower.at < pipe.at:
        raise ValueError(f"start_from recycles {lower.at} blocks, this model {pipe.at}: start from a lower level")
    if not lower.keeps or lower.store.codec not in LOSSLESS:
        raise ValueError(
            f"start_from's store is {lower.store!r} (codec {lower.store.codec!r}): a stacked fill needs exact states "
            f"(a codec in {LOSSLESS}); fill this level from scratch instead"
        )
    if lower.key_fn is not pipe.key_fn:
        raise ValueError("start_from keys examples with another key function; use the same key= for both levels")
    if lower.options.autocast != pipe.options.autocast:
        raise ValueError(
            f"start_from's states were computed under autocast={lower.options.autocast!r}, this level's bottom runs "
            f"under autocast={pipe.options.autocast!r}: its first {lower.at} blocks would not be this level's. "
            f"Recycle both levels with the same autocast=, or fill this level from scratch"
        )
    s = split(pipe.source, lower.at, pipe.options.blocks)
    own = fingerprint_of(s.bottom, model=pipe.source, at=s.at, num_layers=s.num_layers, blocks=s.arch.blocks,
                         codec=lower.store.codec).parts
    parts = [p for p in ("model", "config", "split", "weights") if lower.fingerprint.parts.get(p) != own[p]]
    parts += ["preprocess"] if lower.fingerprint.parts.get("preprocess") != pipe.fingerprint.parts.get("preprocess") else []
    if parts:
        raise FingerprintMismatch(
            f"start_from was recycled from a different model ({', '.join(parts)} differ): its {lower.at} stored "
            f"blocks are not this model's first {lower.at}. Recycle the same model at the lower level"
        )
