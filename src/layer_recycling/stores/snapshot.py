"""The merged snapshot: one sorted key index over many segments, published by replacing a pointer file.

Files of generation ``g<n>-<token>``:

- ``snap-<gen>.keys.npy``: every key once, 20-byte digests, sorted (``S20``);
- ``snap-<gen>.loc.npy``: (entries, 3): segment number (in the header's list), first row, row count; uint32
  when every value fits (12 bytes per entry: with the key, 32), else int64 (the header's ``loc_dtype``);
- ``snap-<gen>.json``: the headers of the segments it covers (a segment rewritten later keeps its old files
  for this generation), entry count, checksums of both arrays.

``CURRENT`` (checksummed JSON: generation and the checksum of its header) names the generation readers open. A merge
writes everything first and replaces ``CURRENT`` last, so a merge killed midway leaves the previous generation
in place. Data files are never rewritten.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import numpy as np

from .binkeys import KEY_DTYPE
from .fenced import Fenced
from .files import (
    MAX_SNAPSHOT_JSON_BYTES, StoreCorrupted, atomic_write, blake, checksummed, fsync_dir, hash_file, load_npy,
    parse_checksummed, raw_bytes, read_bounded, read_checksummed,
)
from .segments import CHECK_ROWS, FORMAT, SEGMENT, Segment, check_header, ranks, release

CURRENT = "CURRENT"
LOC_DTYPES = ("<u4", "<i8")  # the first that holds every location; a header without loc_dtype means int64
GENERATION = re.compile(r"g(?P<n>[0-9]{6})-[0-9a-f]{8}")
SNAPSHOT = re.compile(r"snap-(g[0-9]{6}-[0-9a-f]{8})\.(json|keys\.npy|loc\.npy)")


class Snapshot:
    """A loaded generation: its memory-mapped sorted keys and locations, and the segments they point into."""

    def __init__(self, root: Path, generation: str, header: dict, segments: list[Segment]):
        self.root, self.generation, self.header, self.segments = root, generation, header, segments
        n = header["entries"]
        self.keys = load_npy(root / f"snap-{generation}.keys.npy", header["keys_blake2b"], KEY_DTYPE, (n,))
        loc_dtype = header.get("loc_dtype", "<i8")
        if loc_dtype not in LOC_DTYPES:
            raise StoreCorrupted(f"{root / f'snap-{generation}.json'} names a location type {str(loc_dtype)[:20]!r}; "
                                 f"expected one of {LOC_DTYPES}")
        self.loc = load_npy(root / f"snap-{generation}.loc.npy", header["loc_blake2b"], np.dtype(loc_dtype), (n, 3))
        self._check()
        self._fenced: Fenced | None = None

    def fenced(self) -> Fenced:
        """The index as a ``fenced.Fenced``, searched without leaving its pages resident."""
        if self._fenced is None:
            self._fenced = Fenced(self.keys, self.loc)
        return self._fenced

    def _check(self) -> None:
        """Keys sorted and unique, every location inside its segment (a forged snapshot whose checksums were recomputed)."""
        path = self.root / f"snap-{self.generation}.loc.npy"
        rows = np.array([s.header["rows"] for s in self.segments] + [0], np.int64)
        chunk = CHECK_ROWS
        for lo in range(0, len(self.loc), chunk):
            seg = self.loc[lo : lo + chunk, 0]
            if len(seg) and (seg.min() < 0 or seg.max() >= len(self.segments)):
                raise StoreCorrupted(f"{path} points into segments it does not list")
            spans = self.loc[lo : lo + chunk].astype(np.int64)
            if len(spans) and (spans[:, 1:].min() < 0 or bool(np.any(spans[:, 1] + spans[:, 2] > rows[seg]))):
                raise StoreCorrupted(f"{path} has row spans outside their segments")
            k = self.keys[lo : lo + chunk + 1]
            if len(k) > 1 and not bool(np.all(k[1:] > k[:-1])):
                raise StoreCorrupted(f"{path.with_name(f'snap-{self.generation}.keys.npy')} has keys out of order "
                                     f"or repeated")
            release(self.keys, self.loc)  # each chunk's pages: at the end, the whole index was resident


def read_current(root: Path) -> tuple[str, str] | None:
    """(generation, checksum of its header) that ``CURRENT`` names, or None when no merge ever ran.

    Raises:
        StoreCorrupted: ``CURRENT`` is damaged.
    """
    try:
        doc = read_checksummed(root / CURRENT, "snapshot pointer")
    except FileNotFoundError:
        return None
    gen, checksum = doc.get("generation"), doc.get("blake2b")
    if not (isinstance(gen, str) and GENERATION.fullmatch(gen) and isinstance(checksum, str)):
        raise StoreCorrupted(f"{root / CURRENT} names no valid generation (got {gen!r})")
    return gen, checksum


def load(root: Path, generation: str, checksum: str | None, known: dict) -> Snapshot:
    """Open generation ``generation``; ``known`` maps (segment name, token) to Segment objects to reuse.

    Raises:
        StoreCorrupted: a file of the generation is missing, damaged or inconsistent.
    """
    path = root / f"snap-{generation}.json"
    try:
        raw = read_bounded(path, "snapshot header", MAX_SNAPSHOT_JSON_BYTES)
    except FileNotFoundError:
        raise StoreCorrupted(f"{path} is named by {root / CURRENT} but missing") from None
    if checksum is not None and blake(raw) != checksum:
        raise StoreCorrupted(f"{path} does not match the checksum {root / CURRENT} records for it")
    header = parse_checksummed(raw, path, "snapshot header")
    segs = header.get("segments")
    if not (header.get("format") == FORMAT and header.get("generation") == generation and isinstance(segs, list)
            and type(header.get("entries")) is int and header["entries"] >= 0
            and all(isinstance(s, dict) for s in segs)):
        raise StoreCorrupted(f"{path} is not a snapshot header of format {FORMAT}")
    segments = []
    for h in segs:
        seg = known.get((h.get("name"), h.get("token")))
        if seg is None or seg.header != h:
            _check_like_committed(root, h, path)
            seg = Segment(root, h)
        segments.append(seg)
    return Snapshot(root, generation, header, segments)


def _check_like_committed(root: Path, h: dict, where: Path) -> None:
    """A segment header copied into a snapshot gets the checks a committed one gets."""
    name = h.get("name")
    if not (isinstance(name, str) and SEGMENT.fullmatch(f"{name}.json")):
        raise StoreCorrupted(f"{where} lists an invalid segment ({str(name)[:80]!r})")
    check_header(h, name, where)


# Entries merged at a time: a merge's memory stays bounded whatever the store's size. Small: a range costs about
# 150 B an entry in temporaries (a merge's peak came on top of a fill's memory), and a range more costs a few
# searches per index.
MERGE_ROWS = 1 << 16
SAMPLES = 64  # keys sampled from each index's next MERGE_ROWS to place the end of a range
NPY_HEADER = 128  # bytes of an index file's .npy header, fixed so that it can be written after the rows


def merge(root: Path, previous: Snapshot | None, unmerged: list[Segment]) -> str:
    """Write a new generation covering ``previous`` and ``unmerged``, publish it, return its name.

    Duplicates keep the copy of the lowest-ranked segment (``segments.ranks``).
    A streaming merge: the key space is cut into ranges of at most ``MERGE_ROWS`` entries (each ended at one of the
    indexes' fences as it goes, so whatever the keys), and each range is read from every sorted index with ``pread``
    (nothing mapped), sorted, deduplicated and appended.
    """
    old = list(previous.segments) if previous is not None else []
    new_id = ranks(old, unmerged)  # the merged generation lists its segments by rank
    segments = [None] * len(new_id)
    for segment, rank in zip(old + unmerged, new_id):
        segments[rank] = segment
    sources = []  # (sorted keys as a Fenced, rows lo:hi -> locations (segment rank, first row, count))
    if previous is not None:
        index = previous.fenced()
        sources.append((index, lambda lo, hi, loc=index.locs: _renumbered(loc.rows(lo, hi), new_id)))
    for j, seg in enumerate(unmerged):
        index = seg.fenced()
        sources.append((index, lambda lo, hi, g=new_id[len(old) + j], spans=index.locs: np.column_stack(
            [np.full(hi - lo, g), spans.rows(lo, hi).astype(np.int64)])))
    biggest = max([0] + [s.header["rows"] for s in segments] + [len(segments)])
    loc_dtype = np.dtype(LOC_DTYPES[0] if biggest < 2**32 else LOC_DTYPES[1])
    n = int(GENERATION.fullmatch(previous.generation)["n"]) + 1 if previous is not None else 1
    generation = f"g{n:06d}-{uuid.uuid4().hex[:8]}"
    keys_file, loc_file = _NpyStream(KEY_DTYPE, ()), _NpyStream(loc_dtype, (3,))
    # Two passes over the ranges (one file each): gathering a range again costs less than holding the whole merge.
    atomic_write(root / f"snap-{generation}.keys.npy", keys_file.parts(k for k, _ in _ranges(sources)),
                 sync_dir=False, finish=keys_file.finish)
    atomic_write(root / f"snap-{generation}.loc.npy", loc_file.parts(lc for _, lc in _ranges(sources)),
                 sync_dir=False, finish=loc_file.finish)
    fsync_dir(root)
    keys_hash, loc_hash = (hash_file(root / f"snap-{generation}.{x}.npy", "index file") for x in ("keys", "loc"))
    header = checksummed({"format": FORMAT, "generation": generation, "entries": keys_file.rows,
                     "keys_blake2b": keys_hash, "loc_blake2b": loc_hash, "loc_dtype": loc_dtype.str,
                     "segments": [s.header for s in segments]})
    atomic_write(root / f"snap-{generation}.json", [header])
    atomic_write(root / CURRENT, [checksummed({"generation": generation, "blake2b": blake(header)})])  # the publish
    return generation


def _renumbered(loc: np.ndarray, new_id: np.ndarray) -> np.ndarray:
    """Locations of the previous generation, with its segments numbered as in the new one."""
    loc = loc.astype(np.int64)
    loc[:, 0] = new_id[loc[:, 0]]
    return loc


def _ranges(sources: list):
    """Per range of the key space: (keys, locations) of every source, sorted, one entry per key (the lowest
    segment rank wins), at most ``MERGE_ROWS`` entries a range. A generator: one range is in memory at a time."""
    indexes = [k for k, _ in sources]
    starts = [0] * len(sources)
    while any(lo < len(k) for k, lo in zip(indexes, starts)):
        ends = _range_ends(indexes, starts)
        keys = np.concatenate([k.keys.rows(lo, hi) for k, lo, hi in zip(indexes, starts, ends)]
                              + [np.empty(0, KEY_DTYPE)])
        loc = np.concatenate([at(lo, hi) for (_, at), lo, hi in zip(sources, starts, ends)]
                             + [np.empty((0, 3), np.int64)])
        first = np.lexsort((loc[:, 0], keys))  # by key, then by segment rank
        keys, loc = keys[first], loc[first]
        keep = np.ones(len(keys), bool)
        keep[1:] = keys[1:] != keys[:-1]
        yield keys[keep], loc[keep]
        starts = ends


def _range_ends(indexes: list[Fenced], starts: list[int]) -> list[int]:
    """Where the next range ends in each sorted index (from ``starts``): at the largest of some sampled keys (each
    index's next ``MERGE_ROWS`` keys, every ``MERGE_ROWS // SAMPLES``-th, a ``pread`` each) below which the indexes
    hold at most ``MERGE_ROWS`` entries in all, counted exactly (a binary search over the samples, each step a
    search of every index's fences and one block read). So a range is bounded whatever the keys (cutting the key
    space evenly put every key that shares its leading bytes in one range), nothing is sampled ahead of time, and
    nothing of an index is mapped (through the map, a sample's page fault brought in up to 2 MB of it)."""
    left = [len(k) - lo for k, lo in zip(indexes, starts)]
    if sum(left) <= MERGE_ROWS:
        return [len(k) for k in indexes]
    step = max(1, MERGE_ROWS // SAMPLES)
    pool = np.unique(np.concatenate([k.keys.take(np.arange(lo, min(len(k), lo + MERGE_ROWS), step))
                                     for k, lo in zip(indexes, starts)]))

    def ends(bound: bytes, side: str = "left") -> list[int]:
        return [max(lo, k.rank(bound, side)) for k, lo in zip(indexes, starts)]

    lo, hi = 0, len(pool) - 1  # pool[0] ends an empty range (it starts an index); find the last that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(ends(pool[mid])) - sum(starts) <= MERGE_ROWS:
            lo = mid
        else:
            hi = mid - 1
    cut = ends(pool[lo])
    return cut if cut != starts else ends(pool[0], "right")  # nothing fits: the smallest key's copies alone


class _NpyStream:
    """A .npy file written row block by row block: a fixed-size header patched with the row count at the end."""

    def __init__(self, dtype: np.dtype, row_shape: tuple):
        self.dtype, self.row_shape, self.rows = dtype, row_shape, 0

    def parts(self, blocks):
        yield b"\0" * NPY_HEADER
        for block in blocks:
            self.rows += len(block)
            yield raw_bytes(np.ascontiguousarray(block, self.dtype))

    def finish(self, fd: int) -> None:
        shape = (self.rows, *self.row_shape)
        text = f"{{'descr': {np.lib.format.dtype_to_descr(self.dtype)!r}, 'fortran_order': False, 'shape': {shape}, }}"
        header = text.encode("latin1").ljust(NPY_HEADER - 10 - 1) + b"\n"
        os.pwrite(fd, b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header, 0)
