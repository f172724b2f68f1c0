"""The merged snapshot: one sorted key index over many segments, published by replacing a pointer file.

Files of generation ``g<n>-<token>``:

- ``snap-<gen>.keys.npy``: every key once, 20-byte digests, sorted (``S20``);
- ``snap-<gen>.loc.npy``: (entries, 3): segment number (in the header's list), first row, row count; uint32
  when every value fits (12 bytes per entry: with the key, 32), else int64 (the header's ``loc_dtype``);
- ``snap-<gen>.json``: the headers of the segments it covers (a segment rewritten later keeps its old files
  for this generation), entry count, checksums of both arrays.

``CURRENT`` (signed JSON: generation and the checksum of its header) names the generation readers open. A merge
writes everything first and replaces ``CURRENT`` last, so a merge killed midway leaves the previous generation
in place. Data files are never rewritten.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import numpy as np

from .files import KEY_DTYPE, StoreCorrupted, atomic_write, blake, fsync_dir, load_npy, npy_bytes, read_signed, signed
from .segments import FORMAT, SEGMENT, SPAN_DTYPE, Segment, check_header, release

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

    def _check(self) -> None:
        """Keys sorted and unique, every location inside its segment (a forged but re-signed snapshot)."""
        path = self.root / f"snap-{self.generation}.loc.npy"
        rows = np.array([s.header["rows"] for s in self.segments] + [0], np.int64)
        chunk = 1 << 18
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
        release(self.keys, self.loc)


def read_current(root: Path) -> tuple[str, str] | None:
    """(generation, checksum of its header) that ``CURRENT`` names, or None when no merge ever ran.

    Raises:
        StoreCorrupted: ``CURRENT`` is damaged.
    """
    try:
        doc = read_signed(root / CURRENT, "snapshot pointer")
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
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StoreCorrupted(f"{path} is named by {root / CURRENT} but missing") from None
    if checksum is not None and blake(raw) != checksum:
        raise StoreCorrupted(f"{path} does not match the checksum {root / CURRENT} records for it")
    header = read_signed(path, "snapshot header")
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


def merge(root: Path, previous: Snapshot | None, unmerged: list[Segment]) -> str:
    """Write a new generation covering ``previous`` and ``unmerged``, publish it, return its name.

    Duplicates keep the copy of the lowest segment name (ties: the later-committed copy of a rewritten name).
    """
    old = previous.segments if previous is not None else []
    order = sorted(range(len(old) + len(unmerged)), key=lambda i: ((old + unmerged)[i].name, i < len(old)))
    segments = [(old + unmerged)[i] for i in order]
    new_id = np.empty(len(order), np.int64)
    new_id[order] = np.arange(len(order))
    keys, loc = [], []
    if previous is not None:
        keys.append(np.asarray(previous.keys))
        loc.append(np.column_stack([new_id[np.asarray(previous.loc[:, 0])], previous.loc[:, 1:].astype(SPAN_DTYPE)]))
    for j, seg in enumerate(unmerged):
        k, spans = seg.index()
        keys.append(np.asarray(k))
        loc.append(np.column_stack([np.full(len(k), new_id[len(old) + j]), spans]))
    keys = np.concatenate(keys) if keys else np.empty(0, KEY_DTYPE)
    loc = np.concatenate(loc).astype(SPAN_DTYPE) if loc else np.empty((0, 3), SPAN_DTYPE)
    first = np.lexsort((loc[:, 0], keys))  # by key, then by segment rank: the first of each key wins
    keys, loc = keys[first], loc[first]
    keep = np.ones(len(keys), bool)
    keep[1:] = keys[1:] != keys[:-1]
    keys, loc = keys[keep], loc[keep]
    n = int(GENERATION.fullmatch(previous.generation)["n"]) + 1 if previous is not None else 1
    generation = f"g{n:06d}-{uuid.uuid4().hex[:8]}"
    loc_dtype = LOC_DTYPES[0] if not len(loc) or (loc.min() >= 0 and loc.max() < 2**32) else LOC_DTYPES[1]
    keys_raw, loc_raw = npy_bytes(keys), npy_bytes(loc.astype(loc_dtype))
    atomic_write(root / f"snap-{generation}.keys.npy", [keys_raw], sync_dir=False)
    atomic_write(root / f"snap-{generation}.loc.npy", [loc_raw], sync_dir=False)
    fsync_dir(root)
    header = signed({"format": FORMAT, "generation": generation, "entries": len(keys),
                     "keys_blake2b": blake(keys_raw), "loc_blake2b": blake(loc_raw), "loc_dtype": loc_dtype,
                     "segments": [s.header for s in segments]})
    atomic_write(root / f"snap-{generation}.json", [header])
    atomic_write(root / CURRENT, [signed({"generation": generation, "blake2b": blake(header)})])  # the publish
    return generation
