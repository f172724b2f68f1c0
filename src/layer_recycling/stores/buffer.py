"""A DiskStore's uncommitted entries: their encoded rows in one array, and where each entry sits in it.

One array for the whole buffer: a ``put_many`` batch is copied in once, a segment's data is that array written
in one call and hashed in one pass (the commit thread takes the GIL twice per segment, not twice per batch), and
the array of a committed buffer is reused by the next one. Bounded by the store's ``segment_bytes``, never by the
store's size.
"""

from __future__ import annotations

import itertools
import math
import threading
from typing import Callable

import numpy as np
import torch

from .codecs import SCALE_DTYPE, Codec, encode


class WriteBuffer:
    """One writer's uncommitted entries, in the order they arrived (the order a segment writes them in).

    Args:
        limit: the store's ``segment_bytes``: the array holds that and an eighth more (only the rows written
            take memory: the rest is address space).
        spare: a committed buffer's ``(rows, scales)`` arrays to fill again (their pages are already mapped).
    """

    def __init__(self, limit: int = 64 << 20, spare: tuple[np.ndarray, np.ndarray | None] | None = None):
        self.limit = limit
        self.data, self.scales = spare if spare is not None else (None, None)  # (capacity, *feature), (capacity,)
        self.entries: dict[str, tuple[int, int]] = {}  # key -> (first row, rows)
        self.lengths: list[int] = []  # rows per entry, in the entries' order
        self.checks: dict[str, str] = {}  # input digests of entries that came with one
        self.used = 0  # rows filled

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    @property
    def nbytes(self) -> int:
        return self.used * self.data.itemsize * math.prod(self.data.shape[1:]) if self.data is not None else 0

    def feature(self) -> list[int] | None:
        return list(self.data.shape[1:]) if self.entries else None

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The arrays, for a later buffer to reuse once this one is committed (None: none were made)."""
        return (self.data, self.scales) if self.data is not None else None

    def add(self, keys: list[str], data: np.ndarray, scales: np.ndarray | None, lengths: list[int],
            checks: dict[str, str]) -> None:
        """Entries ``keys`` (new, unique), whose rows are ``data`` cut by ``lengths``, in order."""
        if self.used == 0 and self.data is not None and (data.shape[1:], data.dtype, _width(scales)) != (
                self.data.shape[1:], self.data.dtype, _width(self.scales)):
            self.data, self.scales = None, None  # a spare of another kind: make new arrays
        end = self.used + len(data)
        if self.data is None or end > len(self.data):
            self._make_room(end, data, _width(scales))
        self.data[self.used : end] = data
        if scales is not None:
            self.scales[self.used : end] = scales
        self.entries.update(zip(keys, zip(itertools.accumulate(lengths, initial=self.used), lengths)))
        self.lengths += lengths
        self.checks.update(checks)
        self.used = end

    def _make_room(self, rows: int, like: np.ndarray, side: int | None) -> None:
        """Room for ``rows`` rows like ``like``'s, and at least an eighth past the segment size: allocated at once
        (never grown by copying), the pages it does not fill are never touched."""
        row_bytes = max(1, like.itemsize * math.prod(like.shape[1:]))
        capacity = max(rows, (self.limit + self.limit // 8) // row_bytes)
        data = np.empty((capacity, *like.shape[1:]), like.dtype)
        scales = np.empty((capacity, side), SCALE_DTYPE) if side is not None else None
        if self.used:
            data[: self.used] = self.data[: self.used]
            if scales is not None:
                scales[: self.used] = self.scales[: self.used]
        self.data, self.scales = data, scales

    def extend(self, other: WriteBuffer) -> None:
        """Append ``other``'s entries (none of them in this buffer), as ``add`` would have."""
        if other.entries:
            scales = other.scales[: other.used] if other.scales is not None else None
            self.add(list(other.entries), other.data[: other.used], scales, other.lengths, other.checks)

    def rows(self, key: str) -> tuple[np.ndarray, np.ndarray | None]:
        lo, n = self.entries[key]
        return self.data[lo : lo + n], (self.scales[lo : lo + n] if self.scales is not None else None)

    def take(self, keep: np.ndarray) -> tuple[list[str], list[np.ndarray], list[np.ndarray] | None, np.ndarray,
                                              dict[str, str]]:
        """(keys, row arrays, scale arrays, lengths, checks) of the entries where ``keep`` (in key order) holds,
        the rows in key order and cut anywhere (a segment writes the arrays one after another); the buffer
        keeps them until it is dropped (after the commit: a failed one leaves them to commit later)."""
        keys, lengths = list(self.entries), np.asarray(self.lengths, np.int64)
        if keep.all():  # usually: one array, written and hashed as it is
            kept = [(self.data[: self.used], self.scales[: self.used] if self.scales is not None else None)]
        else:
            kept = [self.rows(k) for k, ok in zip(keys, keep) if ok]
        keys = [k for k, ok in zip(keys, keep) if ok]
        checks = {k: self.checks[k] for k in keys if k in self.checks}
        scales = [s for _, s in kept] if self.scales is not None else None
        return keys, [d for d, _ in kept], scales, lengths[keep], checks


def _width(side: np.ndarray | None) -> int | None:
    """Floats per row of a side array (int8's), None for none."""
    return side.shape[1] if side is not None else None


def new_entries(keys: list[str], values: list, checks: list[str | None], feature: list[int] | None,
                buffers: list[WriteBuffer]) -> tuple[list[str], list[torch.Tensor], dict[str, str]]:
    """(keys, values, {key: check}) of the entries of a put that no buffer holds yet, first copy of a key only.

    Raises:
        TypeError: a value is not a floating tensor of >= 1 dim; ValueError: its trailing shape is not ``feature``.
    """
    if _uniform(values, feature):  # the usual batch: checked in a few passes, no Python work per entry
        held = [b.entries.keys() for b in buffers if b]
        if len(set(keys)) == len(keys) and all(h.isdisjoint(keys) for h in held):
            fresh = {k: c for k, c in zip(keys, checks) if c is not None} if any(c is not None for c in checks) else {}
            return keys, values, fresh
    out, fresh = {}, {}
    for key, value, check in zip(keys, values, checks):
        if not (isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() >= 1):
            got = (f"{value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                   else type(value).__name__)
            raise TypeError(f"store values are floating tensors of >= 1 dim (n, ...), got a {got} for key {key!r}")
        feature = list(value.shape[1:]) if feature is None else feature
        if list(value.shape[1:]) != feature:
            raise ValueError(
                f"entry {key!r} has shape {tuple(value.shape)}, but this store holds entries of shape "
                f"({', '.join(['n', *map(str, feature)])}): dim 0 may vary, trailing dims may not. Use one "
                f"store per state shape."
            )
        if key not in out and not any(key in b for b in buffers):  # committed ones are dropped at the commit
            out[key] = value
            if check is not None:
                fresh[key] = check
    return list(out), list(out.values()), fresh


def _uniform(values: list, feature: list[int] | None) -> bool:
    """Whether every value is a floating tensor of >= 1 dim with trailing shape ``feature`` (or one shared shape)."""
    try:
        dims = {v.dim() for v in values}
        shapes = {v.shape[1:] for v in values}
        dtypes = {v.dtype for v in values}
    except (AttributeError, TypeError):
        return False
    return (len(shapes) == 1 and 0 not in dims and all(isinstance(v, torch.Tensor) for v in values)
            and all(d.is_floating_point for d in dtypes)
            and (feature is None or list(next(iter(shapes))) == feature))


def encode_batch(keys: list[str], values: list[torch.Tensor], codec: Codec) -> tuple[np.ndarray, np.ndarray | None]:
    """``values`` as one array of the codec's rows (and int8 side records), encoded in one torch call; on a failure,
    one call per entry, so that the error names the bad entry's key."""
    try:
        return encode(torch.cat(values) if len(values) > 1 else values[0], codec, "")
    except (ValueError, RuntimeError):
        parts = [encode(v, codec, k) for k, v in zip(keys, values)]
        scales = np.concatenate([s for _, s in parts]) if codec.scaled else None
        return np.concatenate([d for d, _ in parts]), scales


class Commit(threading.Thread):
    """``write()`` (a segment's commit) in a thread; its error is kept for the store to raise. Not a daemon: a
    process that exits while a segment is being written finishes writing it first."""

    def __init__(self, write: Callable[[], object]):
        super().__init__(name="layer-recycling-commit")
        self.write, self.error = write, None
        self.start()

    def run(self) -> None:
        try:
            self.write()
        except BaseException as e:  # raised in the store's thread by DiskStore._finish_commits
            self.error = e
