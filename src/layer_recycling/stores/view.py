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

    A key in several segments answers from the one of lowest rank (``segments.ranks``). ``previous``: the view this one follows, whose
    index of unmerged keys it extends instead of building anew.
    """

    def __init__(self, path: Path, snapshot: snap.Snapshot | None, unmerged: list[Segment], codec: str,
                 previous: View | None = None):
        self.path, self.snapshot, self.unmerged = path, snapshot, unmerged
        self.segments = [*(snapshot.segments if snapshot else []), *unmerged]
        self.ranks = ranks(list(snapshot.segments) if snapshot else [], unmerged)
        shapes = {tuple(s.header["feature_shape"]) for s in self.segments if s.header["rows"] or s.header["entries"]}
        if any(s.header["codec"] != codec for s in self.segments) or len(shapes) > 1:
            raise StoreCorrupted(f"{path} holds segments of different codecs or shapes ({sorted(shapes)})")
        reuse = previous is not None and previous.snapshot is snapshot
        self.hashes = KeyHashes.of(unmerged, previous.hashes if reuse else None)
        n_old = len(self.segments) - len(unmerged)
        number = {id(seg): n_old + j for j, seg in enumerate(unmerged)}
        self._numbers = np.array([number[id(seg)] for seg in self.hashes.segments], np.int64)

    def search(self, q: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment number or -1, spans (n, 2): first row, row count) of binary keys ``q`` where ``valid``.

        The snapshot is searched for every key; an unmerged segment only for the keys whose hash it holds, so a
        batch of new keys costs one search however many segments are unmerged.
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
        queries, owners, everywhere = self.hashes.candidates(q, valid)
        numbers = self._numbers[owners]
        n_old = len(self.segments) - len(self.unmerged)
        todo = range(n_old, len(self.segments)) if len(everywhere) else np.unique(numbers)
        return [(g, np.concatenate([queries[numbers == g], everywhere])) for g in todo]

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


OWNER_BITS = 16  # the low bits of a packed entry: the segment; the high 48: the key's hash
OWNER = np.uint64((1 << OWNER_BITS) - 1)
# Unmerged entries a query may share its hash with before it is searched in every unmerged segment instead:
# copies of one key from many writers, or keys made to collide, cost (segments x batch) searches, never one
# step per entry.
CROWDED = 8


class KeyHashes:
    """Every unmerged key's hash and the segment it came from, packed in one sorted uint64 (the hash high, the
    segment low): which segments may hold a key, in one ``searchsorted``, with 8 bytes per unmerged entry (the one
    per-entry cost of opening a store in anonymous memory: every other index is mapped from its file); a merge
    empties it. A hash of the whole key, not its leading bytes: keys that share a prefix (sequential ids, a fixed
    prefix) spread as digests do. With one unmerged segment there is none (searching it is the one search), and past
    65,536 every segment is searched."""

    def __init__(self, segments: list[Segment], packed: np.ndarray | None):
        self.segments, self.packed = segments, packed  # packed None: search every segment (one, or too many)

    @classmethod
    def of(cls, segments: list[Segment], previous: KeyHashes | None) -> KeyHashes:
        """The index of ``segments``; ``previous`` is extended when it covers some of them and no other."""
        have = {id(s) for s in previous.segments} if previous is not None else set()
        if previous is None or previous.packed is None or not have <= {id(s) for s in segments}:
            previous, have = cls([], np.empty(0, np.uint64)), set()
        new = [s for s in segments if id(s) not in have]
        if not new:
            return previous
        if not 1 < len(previous.segments) + len(new) <= 1 << OWNER_BITS:
            return cls(previous.segments + new, None)
        add = np.empty(sum(s.header["entries"] for s in new), np.uint64)
        at = 0
        for j, s in enumerate(new):
            keys = s.index()[0]
            for lo in range(0, len(keys), CHECK_ROWS):  # temporaries under 1 MB, which malloc hands back
                part = key_hashes(np.asarray(keys[lo : lo + CHECK_ROWS]))
                add[at : at + len(part)] = part & ~OWNER | np.uint64(len(previous.segments) + j)
                at += len(part)
            release(keys)  # the keys' pages were read once: leave them to the page cache
        add.sort()
        if len(previous.packed):
            add = np.insert(previous.packed, np.searchsorted(previous.packed, add), add)
        return cls(previous.segments + new, add)

    def candidates(self, q: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query index, index into ``segments``) for every entry whose hash is a query's, and the queries to search
        in every segment: those with more than CROWDED such entries, or all when ``packed`` is None."""
        none = np.empty(0, np.int64)
        if self.packed is None:
            return none, none, np.flatnonzero(valid)
        if not len(self.packed):
            return none, none, none
        h = key_hashes(q) & ~OWNER
        lo = np.searchsorted(self.packed, h, "left")
        count = np.where(valid, np.searchsorted(self.packed, h | OWNER, "right") - lo, 0)
        crowded = count > CROWDED
        count[crowded] = 0
        # Query i's run of entries, packed[lo[i] : lo[i] + count[i]], laid end to end: no step per query or entry.
        queries = np.repeat(np.arange(len(q)), count)
        start = np.repeat(lo - np.cumsum(count) + count, count)  # packed index minus output index, per run
        owners = self.packed[start + np.arange(len(queries))] & OWNER
        return queries, owners.astype(np.int64), np.flatnonzero(crowded)


MULTIPLIERS = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], np.uint64)  # odd: bijective


def key_hashes(keys: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each 20-byte key (n,), from all its bytes. Not a secret: keys made to collide only reach
    the CROWDED bound, which costs a search per segment, not per entry."""
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
