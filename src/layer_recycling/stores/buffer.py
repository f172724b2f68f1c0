"""A DiskStore's uncommitted entries: encoded ``put_many`` batches kept whole, and where each entry sits in them.

One array per batch rather than one per entry: no per-entry slicing when a batch arrives, and a segment's data
is the batches concatenated. Bounded by the store's ``segment_bytes``, never by the store's size.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import torch

from .codecs import Codec, encode


class WriteBuffer:
    """One writer's uncommitted entries, in the order they arrived (the order a segment writes them in)."""

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.entries: dict[str, tuple[int, int, int]] = {}  # key -> (batch, first row, rows)
        self.batches: list[tuple[np.ndarray, np.ndarray | None]] = []  # (rows, int8 row scales or None)
        self.checks: dict[str, str] = {}  # input digests of entries that came with one
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def feature(self) -> list[int] | None:
        return list(self.batches[0][0].shape[1:]) if self.batches else None

    def add(self, keys: list[str], data: np.ndarray, scales: np.ndarray | None, lengths: list[int],
            checks: dict[str, str]) -> None:
        """Entries ``keys`` (new, unique), whose rows are ``data`` cut by ``lengths``, in order."""
        b, lo = len(self.batches), 0
        self.batches.append((data, scales))
        for key, n in zip(keys, lengths):
            self.entries[key] = (b, lo, n)
            lo += n
        self.checks.update(checks)
        self.nbytes += data.nbytes

    def extend(self, other: WriteBuffer) -> None:
        """Append ``other``'s entries (none of them in this buffer), as ``add`` would have."""
        base = len(self.batches)
        self.batches += other.batches
        self.entries.update({k: (b + base, lo, n) for k, (b, lo, n) in other.entries.items()})
        self.checks.update(other.checks)
        self.nbytes += other.nbytes

    def rows(self, key: str) -> tuple[np.ndarray, np.ndarray | None]:
        b, lo, n = self.entries[key]
        data, scales = self.batches[b]
        return data[lo : lo + n], (scales[lo : lo + n] if scales is not None else None)

    def take(self, keep: np.ndarray) -> tuple[list[str], list[np.ndarray], list[np.ndarray] | None, np.ndarray,
                                              dict[str, str]]:
        """(keys, row arrays, scale arrays, lengths, checks) of the entries where ``keep`` (in key order) holds,
        the rows in key order and cut anywhere (a segment writes the arrays one after another); the buffer
        keeps them until ``clear()`` (after the commit: a failed one leaves them to commit later)."""
        keys = list(self.entries)
        spans = np.array(list(self.entries.values()), np.int64).reshape(-1, 3)
        kept = self.batches if keep.all() else [self.rows(k) for k, ok in zip(keys, keep) if ok]  # usually all
        data = [d for d, _ in kept]
        scales = [s for _, s in kept] if self.batches and self.batches[0][1] is not None else None
        keys = [k for k, ok in zip(keys, keep) if ok]
        checks = {k: self.checks[k] for k in keys if k in self.checks}
        lengths = spans[keep, 2]
        return keys, data, scales, lengths, checks


def new_entries(keys: list[str], values: list, checks: list[str | None], feature: list[int] | None,
                buffers: list[WriteBuffer]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """({key: value}, {key: check}) of the entries of a put that no buffer holds yet, first copy of a key only.

    Raises:
        TypeError: a value is not a floating tensor of >= 1 dim; ValueError: its trailing shape is not ``feature``.
    """
    batch, fresh = {}, {}
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
        if key not in batch and not any(key in b for b in buffers):  # committed ones are dropped at the commit
            batch[key] = value
            if check is not None:
                fresh[key] = check
    return batch, fresh


def encode_batch(batch: dict[str, torch.Tensor], codec: Codec) -> tuple[np.ndarray, np.ndarray | None]:
    """``batch``'s values as one array of the codec's rows (and int8 scales), encoded in one torch call; on a
    failure, one call per entry, so that the error names the bad entry's key."""
    values = list(batch.values())
    try:
        return encode(torch.cat(values) if len(values) > 1 else values[0], codec, "")
    except (ValueError, RuntimeError):
        parts = [encode(v, codec, k) for k, v in batch.items()]
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
        except BaseException as e:  # raised in the store's thread by DiskStore._finish_commit
            self.error = e
