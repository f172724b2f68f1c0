"""Segments: the immutable unit a writer commits. One data file of ragged rows plus a sorted binary key index.

Files of segment ``seg-<writer>-<seq>`` (``<token>`` is fresh per commit, so a retried writer that reuses its
name never overwrites a file a reader may still need):

- ``<name>.<token>.data``: the rows of every entry in the codec's storage dtype, then (int8) their float32
  side records (``codecs.Codec.side`` floats a row: scale, kept values, their columns), each section 64-aligned;
- ``<name>.<token>.keys.npy``: the keys as 20-byte digests, sorted, unique (``S20``);
- ``<name>.<token>.spans.npy``: int64 (entries, 2): each key's first row and row count;
- ``<name>.<token>.checks.npy`` (only when a writer passed checks): per key, in the keys' order, a 20-byte digest
  of the inputs the state was computed from (all zeros: none), so a ``key=`` function that gives two inputs one
  key is caught against entries of earlier runs;
- ``<name>.json``: the index header, written last: names the token, sizes and blake2b checksums of the three
  files above. Its atomic rename is the commit: files no header names are leftovers of a killed writer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import threading
from pathlib import Path

import numpy as np

from .binkeys import KEY_DTYPE
from .codecs import CODECS
from .fenced import Fenced
from .files import (
    StoreCorrupted, atomic_write, blake, checksummed, fsync_dir, hash_fd, is_hex, load_npy, npy_bytes,
    open_committed, pad, pread_into, raw_bytes, read_checksummed, release,
)

FORMAT = 2
SEGMENT = re.compile(r"seg-(?P<writer>[A-Za-z0-9_.-]{1,80})-(?P<seq>[0-9]{6})\.json")
WRITER = re.compile(r"[A-Za-z0-9_.-]{1,80}")
TOKEN = re.compile(r"[0-9a-f]{12}")
SPAN_DTYPE = np.dtype("<i8")
# Index rows checked at a time: temporaries under 1 MB, which malloc hands back (larger ones raise its mmap
# threshold, and then the process keeps megabytes of freed heap for good).
CHECK_ROWS = 1 << 14


def write_segment(root: Path, name: str, token: str, codec: str, feature: list[int], keys: np.ndarray,
                  data: list[np.ndarray], lengths: np.ndarray, scales: list[np.ndarray] | None,
                  checks: np.ndarray | None = None) -> dict:
    """Write and commit one segment; returns its header. ``keys`` (KEY_DTYPE) are unique; their entries' rows
    are the ``data`` arrays one after another (and the int8 ``scales`` arrays), cut by ``lengths``, in order;
    ``checks`` (KEY_DTYPE, same order, zeros for none) digests of the entries' inputs, or None.

    Raises:
        DiskFull: no space left; nothing of this segment is committed (its temp files are removed).
    """
    lengths = np.asarray(lengths, SPAN_DTYPE)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(SPAN_DTYPE) if len(lengths) else lengths
    rows = int(lengths.sum())
    if sum(d.shape[0] for d in data) != rows:
        raise ValueError(f"segment {name}: {sum(d.shape[0] for d in data)} rows of data, but the lengths add up "
                         f"to {rows}")
    parts = [raw_bytes(d) for d in data if d.size]  # written and hashed as they are: no copy into one array
    data_end = sum(p.size for p in parts)
    scales_start = data_end + pad(data_end)
    if CODECS[codec].scaled:
        parts += [np.zeros(pad(data_end), np.uint8), *[raw_bytes(s) for s in scales or []]]
    order = np.argsort(keys, kind="stable")
    keys_raw = npy_bytes(keys[order])
    spans_raw = npy_bytes(np.stack([offsets, lengths], axis=1)[order] if len(lengths) else np.empty((0, 2), SPAN_DTYPE))
    stem = f"{name}.{token}"
    hashing = _Hash(parts)  # in a thread, while the data is written and synced (both release the GIL)
    atomic_write(root / f"{stem}.data", parts, sync_dir=False)
    data_hash = hashing.result()
    atomic_write(root / f"{stem}.keys.npy", [keys_raw], sync_dir=False)
    atomic_write(root / f"{stem}.spans.npy", [spans_raw], sync_dir=False)
    extra = {}
    if checks is not None:
        checks_raw = npy_bytes(np.asarray(checks, KEY_DTYPE)[order])
        atomic_write(root / f"{stem}.checks.npy", [checks_raw], sync_dir=False)
        extra["checks_blake2b"] = blake(checks_raw)
    fsync_dir(root)  # the three renames are durable before the header that names them
    header = {"format": FORMAT, "name": name, "token": token, "codec": codec, "feature_shape": feature,
              "entries": len(keys), "rows": rows, "data_bytes": sum(len(memoryview(p)) for p in parts),
              "scales_start": scales_start, "data_blake2b": data_hash, "keys_blake2b": blake(keys_raw),
              "spans_blake2b": blake(spans_raw), **extra}
    atomic_write(root / f"{name}.json", [checksummed(header)])  # the commit
    return header


class _Hash(threading.Thread):
    """The blake2b of ``parts``, computed in a thread."""

    def __init__(self, parts: list):
        super().__init__(daemon=True)
        self.parts, self.digest, self.error = parts, None, None
        self.start()

    def run(self) -> None:
        try:
            h = hashlib.blake2b(digest_size=32)
            for p in self.parts:
                h.update(p)
            self.digest = h.hexdigest()
        except BaseException as e:  # handed to the caller by result()
            self.error = e

    def result(self) -> str:
        self.join()
        if self.error is not None:
            raise self.error
        return self.digest


def files_of(header: dict) -> list[str]:
    stem = f"{header['name']}.{header['token']}"
    checks = [f"{stem}.checks.npy"] if "checks_blake2b" in header else []
    return [f"{header['name']}.json", f"{stem}.data", f"{stem}.keys.npy", f"{stem}.spans.npy", *checks]


_FIELDS = {"format": int, "name": str, "token": str, "codec": str, "feature_shape": list, "entries": int, "rows": int,
           "data_bytes": int, "scales_start": int, "data_blake2b": str, "keys_blake2b": str, "spans_blake2b": str}


def read_header(root: Path, name: str) -> dict:
    """The checked header of committed segment ``name`` (without ``.json``).

    Raises:
        StoreCorrupted: damaged, or fields of the wrong kind or inconsistent with each other.
    """
    path = root / f"{name}.json"
    return check_header(read_checksummed(path, "segment index header"), name, path)


def check_header(h: dict, name: str, path: Path) -> dict:
    """``h`` if it is a consistent header of segment ``name``; else StoreCorrupted naming ``path``."""
    codec = CODECS.get(h.get("codec"))
    ok = (all(type(h.get(k)) is t for k, t in _FIELDS.items()) and h["format"] == FORMAT and h["name"] == name
          and codec is not None and bool(TOKEN.fullmatch(h["token"])) and _ints(h["feature_shape"])
          and min(h["entries"], h["rows"], h["data_bytes"], h["scales_start"]) >= 0
          and all(is_hex(h[k]) for k in ("data_blake2b", "keys_blake2b", "spans_blake2b"))
          and is_hex(h.get("checks_blake2b", "0" * 64)))
    if ok:
        end = h["rows"] * math.prod(h["feature_shape"]) * codec.storage.itemsize
        size = h["scales_start"] + h["rows"] * codec.side_bytes if codec.scaled else end
        ok = h["data_bytes"] == size and h["scales_start"] == end + pad(end)
    if not ok:
        raise StoreCorrupted(f"{path} is not a segment index header of format {FORMAT} (fields of the wrong kind "
                             f"or sizes that do not add up)")
    return h


def _ints(xs) -> bool:
    return isinstance(xs, list) and all(type(x) is int and x >= 0 for x in xs)


@dataclasses.dataclass
class Segment:
    """A committed segment: its header, and (lazily, per process) its index arrays and its data file."""

    root: Path
    header: dict
    _index: tuple | None = None
    _fenced: Fenced | None = None  # made on the first search
    _checks: np.ndarray | None = None
    _verified: tuple | None = None  # the identity (device, inode, size, mtime, ctime) of the data file hashed
    _file: tuple | None = None  # (pid, descriptor) of the data file

    @property
    def name(self) -> str:
        return self.header["name"]

    def index(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted keys, spans (entries, 2)) memory-mapped, checked on first use in this process."""
        if self._index is None:
            h, stem = self.header, self.root / f"{self.name}.{self.header['token']}"
            keys = load_npy(Path(f"{stem}.keys.npy"), h["keys_blake2b"], KEY_DTYPE, (h["entries"],))
            spans = load_npy(Path(f"{stem}.spans.npy"), h["spans_blake2b"], SPAN_DTYPE, (h["entries"], 2))
            check_index(keys, spans, h["rows"], Path(f"{stem}.keys.npy"))
            self._index = keys, spans
        return self._index

    def fenced(self) -> Fenced:
        """The index as a ``fenced.Fenced``, searched without leaving its pages resident."""
        if self._fenced is None:
            self._fenced = Fenced(*self.index())
        return self._fenced

    def checks(self) -> np.ndarray | None:
        """The input digests in the order of ``index()``'s keys (memory-mapped, checked), or None if none kept."""
        if self._checks is None and "checks_blake2b" in self.header:
            h = self.header
            path = self.root / f"{self.name}.{h['token']}.checks.npy"
            self._checks = load_npy(path, h["checks_blake2b"], KEY_DTYPE, (h["entries"],))
        return self._checks

    def fd(self) -> int:
        """The data file's descriptor in this process, opened (and the file hashed) on first use."""
        pid = os.getpid()
        if self._file is None or self._file[0] != pid:  # a forked child opens its own (and may be closed apart)
            self._file = (pid, self._open_data())
        return self._file[1]

    def verify(self) -> None:
        """Check every file of the segment against its header now (reads check them lazily, on first use)."""
        self.index()
        self.checks()
        if self._file is None or self._file[0] != os.getpid():
            os.close(self._open_data())

    def _open_data(self) -> int:
        """The data file, a regular file of the header's size, hashed unless this very file (same inode, size and
        times: a file replaced or written since differs) was hashed before; a reopen, after the open-file limit
        closed it or in a forked child, reads only bytes that were checked."""
        path = self.root / f"{self.name}.{self.header['token']}.data"
        fd, st = open_committed(path, "segment data file")
        try:
            if st.st_size != self.header["data_bytes"]:
                raise StoreCorrupted(f"{path} has {st.st_size} bytes, its index says {self.header['data_bytes']}: "
                                     f"truncated or replaced")
            identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if self._verified != identity and hash_fd(fd, st.st_size) != self.header["data_blake2b"]:
                raise StoreCorrupted(f"{path} fails its checksum: the file was altered or damaged after it was "
                                     f"written")
        except BaseException:
            os.close(fd)
            raise
        self._verified = identity
        return fd

    def close_file(self) -> None:
        if self._file is not None and self._file[0] == os.getpid():
            os.close(self._file[1])
        self._file = None

    def __del__(self) -> None:  # a store let go keeps no descriptor: 100 stores opened in a loop ran out of them
        self.close_file()

    def drop_search(self) -> None:
        """Let go of the searched index (its fences and descriptors); ``fenced()`` reopens it."""
        self._fenced = None

    def drop_maps(self) -> None:
        self._index, self._checks, self._fenced = None, None, None
        self.close_file()


class RowReader:
    """Copies segments' rows into one array (and their int8 side records into another) with pread, not a map: a map's
    page faults pull whole large folios (2 MB here) into the process, a pread copies only the rows asked for."""

    def __init__(self, out: np.ndarray, scales_out: np.ndarray | None):
        self.rowbytes = out.itemsize * math.prod(out.shape[1:])
        self.rows = memoryview(out.reshape(-1).view(np.uint8))  # ``out`` is C-contiguous: a view, not a copy
        self.scales = memoryview(scales_out.reshape(-1).view(np.uint8)) if scales_out is not None else None
        self.side_bytes = scales_out.itemsize * math.prod(scales_out.shape[1:]) if scales_out is not None else 0

    def read(self, seg: Segment, lo: int, n: int, at: int) -> None:
        """Rows ``lo : lo + n`` of ``seg`` to rows ``at : at + n`` of the output."""
        fd, rb = seg.fd(), self.rowbytes
        view = self.rows[at * rb : (at + n) * rb]
        if os.preadv(fd, [view], lo * rb) != len(view):  # one call, nearly always; else the rest, or an error
            pread_into(fd, view, lo * rb, "a segment data file")
        if self.scales is not None:
            size = self.side_bytes
            pread_into(fd, self.scales[at * size : (at + n) * size], seg.header["scales_start"] + lo * size,
                       "a segment data file")


def check_index(keys: np.ndarray, spans: np.ndarray, rows: int, path: Path, chunk: int = CHECK_ROWS) -> None:
    """Refuse keys out of order or repeated, and spans outside the data (a forged index whose checksums were recomputed).

    Chunked, each chunk's pages released after it: checking a 100M-entry index must not make it resident.
    """
    for lo in range(0, len(keys), chunk):
        k = keys[lo : lo + chunk + 1]
        s = spans[lo : lo + chunk]
        if (len(k) > 1 and not bool(np.all(k[1:] > k[:-1]))) or (len(s) and (
                s.min() < 0 or bool(np.any(s[:, 0] + s[:, 1] > rows)))):
            raise StoreCorrupted(f"{path} is an invalid index: keys out of order or repeated, or row spans outside "
                                 f"the data ({rows} rows)")
        release(keys, spans)  # each chunk's pages: at the end, the whole index was resident


def ranks(old: list[Segment], new: list[Segment]) -> np.ndarray:
    """The rank of each of ``old + new`` segments: a key stored in several is read from the lowest rank.

    The rule, the one place it is written: the lowest segment name wins, and of two copies under one name (a
    writer that reused its name, e.g. a retried task) the later-committed one (in ``new``).
    """
    segments = [*old, *new]
    order = sorted(range(len(segments)), key=lambda i: (segments[i].name, i < len(old)))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank
