"""What entries take on disk, and whether a disk has room for them: one rule for ``lr.plan`` and for a fill.

An entry of ``rows`` rows (tokens) costs its codes and side records, its rows in a segment's index (key and span,
and the digest of its inputs under a user's ``key=``) and in the merged index (key and location). Each segment adds
its header and array headers. Alignment padding (under 8 bytes a segment) is left out.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch

from .codecs import CODECS
from .files import DiskFull

SEGMENT_INDEX = 20 + 16  # a segment's key (20 bytes) and span (offset, length: int64 each)
MERGED_INDEX = 20 + 12  # the merged snapshot's key and location (3 x uint32)
INPUT_CHECK = 20  # the digest of an entry's inputs, kept beside entries stored under a user's key=
SEGMENT_FILES = 2048  # a segment's header (checksummed JSON) and its .npy headers, about
STORE_FILES = 4096  # store.json, CURRENT and the snapshot's header, about
ENTRIES_PER_SEGMENT = 1 << 16  # DiskStore commits a segment at this many entries (or at segment_bytes)


def row_bytes(feature: Sequence[int], codec: str) -> int:
    """Bytes of one stored row (a token's state) of shape ``feature`` in ``codec``: codes and side record."""
    spec = CODECS[codec]
    return math.prod(feature) * spec.storage.itemsize + spec.side_bytes


def entries_bytes(rows: int, entries: int, feature: Sequence[int], codec: str, checks: bool = False) -> int:
    """Bytes on disk of ``entries`` entries holding ``rows`` rows in all, with their indexes and segment files."""
    if entries <= 0:
        return 0
    per_entry = SEGMENT_INDEX + MERGED_INDEX + (INPUT_CHECK if checks else 0)
    segments = math.ceil(entries / ENTRIES_PER_SEGMENT)
    return rows * row_bytes(feature, codec) + entries * per_entry + segments * SEGMENT_FILES + STORE_FILES


def in_words(n: float) -> str:
    """A byte count as a person reads it: 912 bytes, 3.4 MiB, 1.2 GiB."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{int(n):,} bytes"


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes free for this user on the disk that holds ``path`` (or, for a store not made yet, its nearest
    existing parent)."""
    here = Path(path).absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    return shutil.disk_usage(here).free


def check_room(store, states: Sequence[torch.Tensor], entries: int, checks: bool) -> None:
    """Refuse a fill of ``entries`` new entries into a ``DiskStore`` whose disk cannot hold them, from the bytes of
    ``states`` (the fill's first batch); before anything of the fill is written. Other stores pass.

    Raises:
        DiskFull: the predicted size exceeds the free space, with both numbers and how to make room.
    """
    path = getattr(store, "path", None)
    if path is None or not states or entries <= 0 or store.codec not in CODECS:
        return
    feature = tuple(states[0].shape[1:])
    rows = sum(int(s.shape[0]) for s in states) / len(states)
    need = entries_bytes(math.ceil(rows * entries), entries, feature, store.codec, checks)
    free = free_bytes(path)
    if need > free:
        raise DiskFull(
            f"this fill would add about {entries:,} entries of {rows:.1f} rows of {list(feature)} in {store.codec}: "
            f"about {in_words(need)}, but the disk of {path} has {in_words(free)} free. Nothing was "
            f"written. Free some space, put the store on a larger disk, or store a smaller codec (float16 halves the "
            f"size, int8 about quarters it); lr.plan(model, examples, at) gives the size of each beforehand"
        )
