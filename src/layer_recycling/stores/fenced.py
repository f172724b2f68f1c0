"""Searching a sorted index file without mapping it into the process.

A binary search over a mapped index of n keys touches about log2(pages) pages per query, and on this kernel a page
fault maps the whole large folio it falls in (up to 2 MB): a fill's chunk of 4,096 queries into a 10M-entry index
mapped most of its keys file, and a merge's range ends mapped the next keys of every segment merged. Here one key in
``FENCE`` is held in memory (0.08 B an entry): a query finds its block there, then that block alone is read with
``pread`` (5 KB), and so is each found key's location row. Nothing of the index is mapped: a lookup holds a group's
blocks, whatever the index's size.
"""

from __future__ import annotations

import math
import os
import weakref

import numpy as np

from .files import StoreCorrupted, open_committed, pread_into

FENCE = 256  # keys a block (5 KB): the first of each is held in memory
GROUP = 256  # queries whose blocks are read together: at most GROUP blocks (1.3 MB) in memory


class FileRows:
    """The rows of an index array as ``files.load_npy`` mapped it, read with ``pread`` from a descriptor of the
    same file (checked: same device, inode, size and time as the file hashed), never through the map. An array
    without a file (in memory) is indexed."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.rowbytes = array.dtype.itemsize * math.prod(array.shape[1:])
        self.fd, source = None, getattr(array, "source", None)
        if source is not None:
            path, identity, self.offset = source
            self.what, self.fd = str(path), _open_same(path, identity)
            # Closed with this object (a forked child holds its own copy), not at exit: a store's exit hook may
            # still search then, and the process's end closes it anyway.
            weakref.finalize(self, os.close, self.fd).atexit = False

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo : hi`` (clipped to the array), as a new array."""
        hi = min(hi, len(self))
        lo = min(lo, hi)
        if self.fd is None:
            return np.array(self.array[lo:hi])
        out = np.empty((hi - lo, *self.shape[1:]), self.dtype)
        pread_into(self.fd, memoryview(out.reshape(-1).view(np.uint8)), self.offset + lo * self.rowbytes, self.what)
        return out

    def take(self, at: np.ndarray) -> np.ndarray:
        """Rows at the indices ``at``, a ``pread`` each (the locations of found keys)."""
        if self.fd is None:
            return np.array(self.array[at])
        out = np.empty((len(at), *self.shape[1:]), self.dtype)
        view, rb = memoryview(out.reshape(-1).view(np.uint8)), self.rowbytes
        for j, i in enumerate(at.tolist()):
            pread_into(self.fd, view[j * rb : (j + 1) * rb], self.offset + i * rb, self.what)
        return out


def _open_same(path, identity: tuple) -> int:
    fd, st = open_committed(path, "index file")
    if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != identity:
        os.close(fd)
        raise StoreCorrupted(f"{path} was replaced after it was checked: a committed index file never changes. Open "
                             f"the store again")
    return fd


class Fenced:
    """Sorted keys (n,) and their locations (n, w), as ``files.load_npy`` maps them, searched block by block."""

    def __init__(self, keys: np.ndarray, locs: np.ndarray):
        self.keys, self.locs = FileRows(keys), FileRows(locs)
        self.fences = self.keys.take(np.arange(0, len(keys), FENCE))  # a read each: no temporary of the index

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, q: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of the queries ``q`` found (where ``valid``), the found ones' location rows as int64)."""
        hit = np.zeros(len(q), bool)
        if not len(self.keys):
            return hit, np.empty((0, self.locs.shape[1]), np.int64)
        block = np.maximum(np.searchsorted(self.fences, q, "right") - 1, 0)
        found_at = [np.empty(0, np.int64)]
        for lo in range(0, len(q), GROUP):
            found, at = self._group(q[lo : lo + GROUP], block[lo : lo + GROUP])
            hit[lo : lo + GROUP] = found & valid[lo : lo + GROUP]
            found_at.append(at[hit[lo : lo + GROUP]])
        return hit, self.locs.take(np.concatenate(found_at)).astype(np.int64)

    def _group(self, q: np.ndarray, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found, index of the key found or of its place) of queries ``q`` falling in blocks ``block``. The blocks
        read, in order, are themselves sorted, so one ``searchsorted`` over them serves every query."""
        blocks = np.unique(block)
        near = np.concatenate([self.keys.rows(b * FENCE, (b + 1) * FENCE) for b in blocks.tolist()])
        at = ((blocks * FENCE)[:, None] + np.arange(FENCE)).ravel()
        at = at[at < len(self.keys)]
        p = np.minimum(np.searchsorted(near, q), len(near) - 1)
        return near[p] == q, at[p]

    def rank(self, bound: bytes, side: str = "left") -> int:
        """How many keys are below ``bound`` (``side="right"``: at most ``bound``): its fences, then one block read."""
        j = int(np.searchsorted(self.fences, bound, side))
        if j == 0:
            return 0
        block = self.keys.rows((j - 1) * FENCE, j * FENCE)
        return (j - 1) * FENCE + int(np.searchsorted(block, bound, side))
