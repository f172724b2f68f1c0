"""What one process sees of a DiskStore's committed entries: the current generation plus the segments committed
after it, searched for a whole batch of keys at once (one search per sorted index, ``fenced.Fenced``), whatever the keys."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import snapshot as snap
from .binkeys import KEY_BYTES, key_strs
from .fenced import Fenced
from .files import StoreCorrupted
from .segments import CHECK_ROWS, SEGMENT, Segment, files_of, ranks, read_header, release


class View:
    """``snapshot`` (or None) and ``unmerged`` segments; ``segments`` numbers them all (the snapshot's first).

    A key in several segments answers from the one of lowest rank (``segments.ranks``). ``previous``: the view this
    one follows, whose filters of unmerged segments it keeps instead of building them anew; ``given``: filters by
    (segment name, token) made elsewhere (a spawned worker's, from the process that pickled the store).
    """

    def __init__(self, path: Path, snapshot: snap.Snapshot | None, unmerged: list[Segment], codec: str,
                 previous: View | None = None, given: dict[tuple[str, str], KeyFilter] | None = None):
        self.path, self.snapshot, self.unmerged = path, snapshot, unmerged
        self.segments = [*(snapshot.segments if snapshot else []), *unmerged]
        self.ranks = ranks(list(snapshot.segments) if snapshot else [], unmerged)
        shapes = {tuple(s.header["feature_shape"]) for s in self.segments if s.header["rows"] or s.header["entries"]}
        if any(s.header["codec"] != codec for s in self.segments) or len(shapes) > 1:
            raise StoreCorrupted(f"{path} holds segments of different codecs or shapes ({sorted(shapes)})")
        self.filters = filters(unmerged, {**(given or {}), **(previous.filters if previous is not None else {})})
        still = {id(seg) for seg in unmerged}
        for seg in previous.unmerged if previous is not None else []:
            if id(seg) not in still:
                seg.drop_search()  # merged: its index is no longer searched here (its descriptors close)

    def search(self, q: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment number or -1, spans (n, 2): first row, row count) of binary keys ``q`` where ``valid``.

        The snapshot is searched for every key; an unmerged segment only for the keys its filter may hold, so a
        batch of new keys costs about one search however many segments are unmerged.
        """
        n = len(q)
        best = np.full(n, np.iinfo(np.int64).max)  # rank of the winning segment so far
        where = np.full(n, -1, np.int64)
        spans = np.zeros((n, 2), np.int64)
        if self.snapshot is not None:
            self._best(self.snapshot.fenced(), lambda rows: rows[:, 0], q, valid, np.arange(n), best, where, spans)
        for g, idx in self._unmerged_searches(q, valid):
            self._best(self.segments[g].fenced(), lambda rows, g=g: np.full(len(rows), g), q[idx], valid[idx], idx,
                       best, where, spans)
        return where, spans

    def _unmerged_searches(self, q: np.ndarray, valid: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(segment number, batch indices to search in it) for each unmerged segment that may hold keys ``q``."""
        n_old = len(self.segments) - len(self.unmerged)
        if not self.filters:
            return [(n_old, np.arange(len(q)))] if self.unmerged else []
        asked, found = np.flatnonzero(valid), [[np.empty(0, np.int64)] for _ in self.unmerged]
        for lo in range(0, len(asked), PROBED):  # a commit's search of 65,536 keys: its probes were 20 MB at once
            part = asked[lo : lo + PROBED]
            hashes, probes = key_hashes(q[part]), {}
            for j, seg in enumerate(self.unmerged):
                found[j].append(part[self.filters[seg.name, seg.header["token"]].may_hold(hashes, probes)])
        return [(n_old + j, idx) for j, idx in enumerate(map(np.concatenate, found)) if len(idx)]

    def _best(self, index: Fenced, segment_of, q, valid, idx, best, where, spans) -> None:
        """Where keys ``q`` (at ``idx`` of the batch) are in ``index`` and its segment (``segment_of(location
        rows)``) outranks the best found so far, record it."""
        hit, rows = index.find(q, valid)
        seg = segment_of(rows)
        rank = self.ranks[seg]
        at = idx[hit]
        m = rank < best[at]
        best[at[m]], where[at[m]] = rank[m], seg[m]
        spans[at[m]] = rows[m][:, -2:]

    def keys(self) -> list[np.ndarray]:
        """The sorted keys of each index (a key may be in several)."""
        return ([np.asarray(self.snapshot.keys)] if self.snapshot else []) + [
            np.asarray(s.index()[0]) for s in self.unmerged]

    def count(self) -> int | None:
        """Entries, when no key can be in two indexes (one index, or none); else None."""
        if self.unmerged:
            return self.unmerged[0].header["entries"] if len(self.unmerged) == 1 and self.snapshot is None else None
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


# Bits of a segment's filter per key, and bits set per key: about 1 in 1,800 keys it lacks searches it anyway, so a
# chunk of 4,096 new keys searches each unmerged segment for a few keys at most (at 8 bits, 2% searched each for
# 80: a fill's lookups cost 4 times the CPU of an exact index's).
FILTER_BITS = 16
PROBES = 8  # 8: a key's probe results, 8 bools, are one uint64
ALL_SET = np.uint64(0x0101010101010101)
PROBED = 4096  # keys whose probes are computed at once (about 300 kB of them)


class KeyFilter:
    """A Bloom filter of one unmerged segment's keys: whether it may hold a key, 2 bytes per entry (the one
    per-entry cost of opening a store in anonymous memory: every index is read from its file). A segment it names
    wrongly is searched, and the search compares whole keys: a false hit costs a search, never a wrong answer. Built
    from a hash of the whole key, not its leading bytes: keys that share a prefix (sequential ids, a fixed prefix)
    spread as digests do."""

    def __init__(self, bits: np.ndarray):
        self.bits = bits  # uint8, a power of two of them (at least 8)

    @classmethod
    def of(cls, keys: np.ndarray) -> KeyFilter:
        """The filter of sorted keys ``keys`` (a mapped index: read in chunks, its pages released as it goes)."""
        bits = np.zeros(1 << max(3, int(len(keys) * FILTER_BITS // 8 - 1).bit_length()), np.uint8)
        for lo in range(0, len(keys), CHECK_ROWS // PROBES):  # temporaries under 1 MB, which malloc hands back
            at = _probes(key_hashes(np.asarray(keys[lo : lo + CHECK_ROWS // PROBES])), 8 * len(bits)).ravel()
            np.bitwise_or.at(bits, at >> 3, np.left_shift(1, at & 7).astype(np.uint8))
            release(keys)
        return cls(bits)

    def may_hold(self, hashes: np.ndarray, probes: dict | None = None) -> np.ndarray:
        """Per hash (``key_hashes``): False where the segment surely lacks the key. ``probes``: the bytes and bits
        of ``hashes`` in filters of each size, kept across the filters of a batch (segments of one size share them)."""
        probes = {} if probes is None else probes
        if len(self.bits) not in probes:
            at = _probes(hashes, 8 * len(self.bits))
            probes[len(self.bits)] = (at >> 3, np.left_shift(1, at & 7).astype(np.uint8))
        byte, bit = probes[len(self.bits)]
        every = (self.bits[byte] & bit) == bit  # (n, PROBES) bool: 8 bytes a row, read as one uint64 (np.all is slower)
        return every.view(np.uint64)[:, 0] == ALL_SET


SCHEME = (FILTER_BITS, PROBES)  # how a filter is made: a worker's code may differ from the parent's


def filters_in(shared: tuple | None) -> dict[tuple[str, str], KeyFilter]:
    """The filters ``DiskStore._shared_filters`` pickled: (scheme, names, sizes, one uint8 tensor), mapped, not
    copied; none if they were made another way (a spawned worker imports the code as it is on disk now)."""
    if shared is None or tuple(shared[0]) != SCHEME:
        return {}
    _, names, sizes, block = shared
    parts = np.split(block.numpy(), np.cumsum(sizes)[:-1])
    return {tuple(name): KeyFilter(part) for name, part in zip(names, parts)}


def _probes(hashes: np.ndarray, size: int) -> np.ndarray:
    """(n, PROBES) bit positions of each hash in a filter of ``size`` bits (a power of two): double hashing."""
    step = hashes >> np.uint64(32) | np.uint64(1)
    at = hashes[:, None] + step[:, None] * np.arange(PROBES, dtype=np.uint64)  # wraps mod 2**64, as meant
    return (at & np.uint64(size - 1)).astype(np.int64)


def filters(segments: list[Segment], previous: dict[tuple[str, str], KeyFilter]
            ) -> dict[tuple[str, str], KeyFilter]:
    """The filter of each of ``segments`` by (name, token), ``previous``'s kept; none for a single segment
    (searching it is the one search)."""
    if len(segments) < 2:
        return {}
    names = [(s.name, s.header["token"]) for s in segments]
    return {n: previous[n] if n in previous else KeyFilter.of(s.index()[0]) for n, s in zip(names, segments)}


MULTIPLIERS = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], np.uint64)  # odd: bijective


def key_hashes(keys: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each 20-byte key (n,), from all its bytes. Not a secret: keys made to collide cost a search
    of each unmerged segment, never a wrong answer."""
    n = len(keys)
    words = np.zeros((n, 24), np.uint8)  # the key's bytes padded to three uint64
    words[:, :KEY_BYTES] = np.ascontiguousarray(keys).view(np.uint8).reshape(n, KEY_BYTES)
    h = (words.view("<u8") * MULTIPLIERS).sum(axis=1, dtype=np.uint64)  # wraps mod 2**64, as meant
    # splitmix64's finalizer: every input bit moves about half of the output bits, the high 48 kept among them.
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


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
