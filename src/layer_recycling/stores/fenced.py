"""Searching a memory-mapped sorted index without leaving it resident in the process.

A binary search over a mapped index of n keys touches about log2(pages) pages per query, and the pages stay mapped:
a fill's chunk of 4,096 queries into a 10M-entry index touched half its keys file, and a long fill all of it (200 MB
of RSS, file-backed). Here one key in ``FENCE`` is held in memory (0.08 B an entry): a query finds its block there,
then reads that block alone (about two pages), and the index's pages are released after every ``GROUP`` queries. So
what a lookup leaves resident is bounded by a group's blocks, whatever the index's size.
"""

from __future__ import annotations

import numpy as np

from .files import release

FENCE = 256  # keys a block (5 KB): the first of each is held in memory
GROUP = 256  # queries between two releases of the index's pages: at most GROUP blocks and location pages mapped


class Fenced:
    """Sorted keys (n,) and their locations (n, w), memory-mapped, searched block by block."""

    def __init__(self, keys: np.ndarray, locs: np.ndarray):
        self.maps, self.keys, self.locs = (keys, locs), np.asarray(keys), np.asarray(locs)
        parts = []
        for lo in range(0, len(self.keys), FENCE * GROUP * 16):  # a stride of 5 KB touches every page: release
            parts.append(np.ascontiguousarray(self.keys[lo : lo + FENCE * GROUP * 16 : FENCE]))  # them as it goes
            release(*self.maps)
        self.fences = np.concatenate(parts) if parts else self.keys[:0].copy()

    def find(self, q: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of the queries ``q`` found (where ``valid``), the found ones' location rows as int64)."""
        hit = np.zeros(len(q), bool)
        if not len(self.keys):
            return hit, np.empty((0, self.locs.shape[1]), np.int64)
        block = np.maximum(np.searchsorted(self.fences, q, "right") - 1, 0)
        rows = []
        for lo in range(0, len(q), GROUP):
            found, at = self._group(q[lo : lo + GROUP], block[lo : lo + GROUP])
            hit[lo : lo + GROUP] = found & valid[lo : lo + GROUP]
            rows.append(self.locs[at[hit[lo : lo + GROUP]]].astype(np.int64))
            release(*self.maps)
        return hit, np.concatenate(rows)

    def _group(self, q: np.ndarray, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found, index of the key found or of its place) of queries ``q`` falling in blocks ``block``. The blocks
        read, in order, are themselves sorted, so one ``searchsorted`` over them serves every query."""
        blocks = np.unique(block)
        at = ((blocks * FENCE)[:, None] + np.arange(FENCE)).ravel()
        at = at[at < len(self.keys)]
        near = self.keys[at]
        p = np.minimum(np.searchsorted(near, q), len(near) - 1)
        return near[p] == q, at[p]
