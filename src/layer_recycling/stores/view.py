"""What one process sees of a DiskStore's committed entries: the current generation plus the segments committed
after it, searched for a whole batch of keys at once (one ``searchsorted`` per sorted index)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import snapshot as snap
from .files import StoreCorrupted, key_strs
from .segments import SEGMENT, Segment, files_of, read_header


class View:
    """``snapshot`` (or None) and ``unmerged`` segments; ``segments`` numbers them all (the snapshot's first).

    A key in several segments answers from the one of lowest rank: the lowest name, and of two copies under one
    name (a writer that reused its name) the later-committed one.
    """

    def __init__(self, path: Path, snapshot: snap.Snapshot | None, unmerged: list[Segment], codec: str):
        self.path, self.snapshot, self.unmerged = path, snapshot, unmerged
        self.segments = [*(snapshot.segments if snapshot else []), *unmerged]
        n_old = len(self.segments) - len(unmerged)
        order = sorted(range(len(self.segments)), key=lambda i: (self.segments[i].name, i < n_old))
        self.ranks = np.empty(len(order), np.int64)
        self.ranks[order] = np.arange(len(order))
        shapes = {tuple(s.header["feature_shape"]) for s in self.segments if s.header["rows"] or s.header["entries"]}
        if any(s.header["codec"] != codec for s in self.segments) or len(shapes) > 1:
            raise StoreCorrupted(f"{path} holds segments of different codecs or shapes ({sorted(shapes)})")

    def search(self, q: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment number or -1, spans (n, 2): first row, row count) of binary keys ``q`` where ``valid``."""
        n = len(q)
        best = np.full(n, np.iinfo(np.int64).max)  # rank of the winning segment so far
        where = np.full(n, -1, np.int64)
        spans = np.zeros((n, 2), np.int64)
        for sorted_keys, locs, segment_of in self._indexes():
            if not len(sorted_keys):
                continue
            i = np.minimum(np.searchsorted(sorted_keys, q), len(sorted_keys) - 1)
            hit = valid & (sorted_keys[i] == q)
            seg = segment_of(locs, i[hit])
            rank = self.ranks[seg]
            m = rank < best[hit]
            idx = np.flatnonzero(hit)[m]
            best[idx], where[idx] = rank[m], seg[m]
            spans[idx] = locs[i[idx]][:, -2:]
        return where, spans

    def _indexes(self):
        """Per sorted index: (keys, locations, (locations, rows) -> segment numbers), as plain arrays (indexing
        a np.memmap costs several times more)."""
        if self.snapshot is not None:
            loc = np.asarray(self.snapshot.loc)
            yield np.asarray(self.snapshot.keys), loc, lambda loc, i: loc[i, 0].astype(np.int64)
        base = len(self.segments) - len(self.unmerged)
        for j, seg in enumerate(self.unmerged):
            keys, spans = seg.index()
            yield np.asarray(keys), np.asarray(spans), lambda _, i, g=base + j: np.full(len(i), g)

    def keys(self) -> list[np.ndarray]:
        """The sorted keys of each index (a key may be in several)."""
        return ([np.asarray(self.snapshot.keys)] if self.snapshot else []) + [
            np.asarray(s.index()[0]) for s in self.unmerged]

    def count(self) -> int | None:
        """Entries, when no key can be in two indexes (nothing unmerged); else None."""
        if self.unmerged:
            return None
        return len(self.snapshot.keys) if self.snapshot is not None else 0

    def feature(self) -> list[int] | None:
        return next((s.header["feature_shape"] for s in self.segments if s.header["entries"]), None)

    def files(self) -> set[str]:
        """Every file this view reads."""
        names = {f for seg in self.segments for f in files_of(seg.header)}
        if self.snapshot is not None:
            g = self.snapshot.generation
            names |= {snap.CURRENT, f"snap-{g}.json", f"snap-{g}.keys.npy", f"snap-{g}.loc.npy"}
        return names


def scan(path: Path, previous: dict[str, tuple[int, dict]]) -> dict[str, tuple[int, dict]]:
    """{header file: (inode, header)} of every committed segment; headers whose file did not change since
    ``previous`` are not read again."""
    headers = {}
    for entry in os.scandir(path):
        if SEGMENT.fullmatch(entry.name):
            inode, h = previous.get(entry.name, (None, None))
            if inode != entry.inode():
                try:
                    h = read_header(path, entry.name[:-5])
                except FileNotFoundError:
                    continue  # replaced between the listing and the read: the next scan sees it
            headers[entry.name] = (entry.inode(), h)
    return headers


def unmerged_segments(path: Path, snapshot: snap.Snapshot | None, headers: dict[str, tuple[int, dict]],
                      known: dict[tuple[str, str], Segment]) -> list[Segment]:
    """The committed segments ``snapshot`` does not cover, by name; ``known`` keeps one Segment (and its maps)
    per (name, token) across scans."""
    merged = {(h["name"], h["token"]) for h in snapshot.header["segments"]} if snapshot else set()
    for seg in snapshot.segments if snapshot else []:
        known.setdefault((seg.name, seg.header["token"]), seg)
    unmerged = []
    for _, h in sorted(headers.values(), key=lambda ih: ih[1]["name"]):
        if (h["name"], h["token"]) not in merged:
            seg = known.get((h["name"], h["token"]))
            if seg is None or seg.header != h:
                seg = known[(h["name"], h["token"])] = Segment(path, h)
            unmerged.append(seg)
    return unmerged


NO_CHECK = "0" * 40  # an entry stored without an input digest


def checks_in(seg: Segment, keys: np.ndarray) -> list[str | None]:
    """The input digests ``seg`` keeps for ``keys`` (binary, all in ``seg``); None where it keeps none."""
    checks = seg.checks()
    if checks is None:
        return [None] * len(keys)
    got = key_strs(np.asarray(checks[np.searchsorted(seg.index()[0], keys)]))
    return [None if c == NO_CHECK else c for c in got]
