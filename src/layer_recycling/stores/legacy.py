"""DiskStore's format 1 (up to layer_recycling 0.1): shards (magic, JSON header, 64-aligned arrays) and a
self-checksummed JSON manifest. Kept to read old stores for ``convert`` (and to write them in its tests).

Everything read is validated before use; nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import mmap
import os
import re
import shutil
import struct
import uuid
from pathlib import Path

import numpy as np

from .codecs import CODECS, SCALE_DTYPE

FORMAT = 1
MANIFEST = "manifest.json"
MAGIC = b"LRSHARD1"  # then the header length (<Q), the JSON header, then the arrays, each 64-aligned
_MAX_HEADER = 1 << 28  # a length field beyond this is damage, not a header worth reading
_SHARD = re.compile(r"shard-[0-9a-f]{32}\.bin")  # also keeps a hand-made manifest from naming ../anything
_TEMP = re.compile(r"(shard-[0-9a-f]{32}\.bin|manifest\.json)\.[0-9a-f]{8}\.tmp")
_HEX = re.compile(r"[0-9a-f]{64}")
_RECORD = {"name": str, "bytes": int, "blake2b": str, "header_blake2b": str, "entries": int, "rows": int}


from .files import DiskFull, StoreCorrupted  # noqa: E402  (one error type for both formats)
from .files import atomic_write, blake as _blake, canonical as _canonical, hash_fd as _hash_fd  # noqa: E402
from .files import pad as _pad, raw_bytes as _raw_bytes  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Shard:
    """One committed shard: its manifest record and its validated header (keys and row spans)."""

    record: dict
    keys: list[str]
    offsets: list[int]
    lengths: list[int]
    data_start: int
    scales_start: int
    size: int  # the file size its rows, shape and dtype imply


def is_ours(name: str) -> bool:
    """Whether a file name is one DiskStore writes (a shard or a temp file), so it may clean it up."""
    return bool(_SHARD.fullmatch(name) or _TEMP.fullmatch(name))


# ---- the manifest -------------------------------------------------------------------------------------------


def new_manifest(codec: str, created_by: str) -> dict:
    return {"format": FORMAT, "created_by": created_by, "codec": codec, "feature_shape": None,
            "fingerprint": None, "shards": []}


def manifest_bytes(manifest: dict) -> bytes:
    # The manifest carries its own checksum: a flipped bit never turns into a different valid store.
    return _canonical({"blake2b": _blake(_canonical(manifest)), "manifest": manifest})


def parse_manifest(raw: bytes, path: Path) -> dict:
    """The manifest in ``raw`` (the bytes of ``path``), checked.

    Raises:
        StoreCorrupted: not JSON, a failed checksum, or fields of the wrong kind.
    """
    try:
        doc = json.loads(raw.decode("utf-8"))
        manifest, checksum = doc["manifest"], doc["blake2b"]
        ok = checksum == _blake(_canonical(manifest))
    except (ValueError, KeyError, TypeError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise StoreCorrupted(f"{path} is not a valid DiskStore manifest ({type(e).__name__}: {e})") from None
    if not ok:
        raise StoreCorrupted(f"{path} fails its checksum: the manifest was altered or damaged")
    _check_manifest(manifest, path)
    return manifest


def _check_manifest(m, path: Path) -> None:
    """Refuse a manifest whose fields have the wrong kind (a hand-made one, since its checksum holds)."""
    fp = m.get("fingerprint") if isinstance(m, dict) else None
    ok = (isinstance(m, dict) and m.get("format") == FORMAT and m.get("codec") in CODECS
          and isinstance(m.get("created_by"), str) and (m.get("feature_shape") is None or _ints(m["feature_shape"]))
          and (fp is None or (isinstance(fp, dict) and all(isinstance(v, str) for v in fp.values())))
          and isinstance(m.get("shards"), list) and all(_record_ok(r) for r in m["shards"]))
    if not ok or len({r["name"] for r in m["shards"]}) != len(m["shards"]):
        raise StoreCorrupted(f"{path} is not a DiskStore manifest of format {FORMAT} (fields of the wrong kind)")


def _record_ok(r) -> bool:
    return (isinstance(r, dict) and all(type(r.get(k)) is t for k, t in _RECORD.items())
            and bool(_SHARD.fullmatch(r["name"])) and bool(_HEX.fullmatch(r["blake2b"]))
            and bool(_HEX.fullmatch(r["header_blake2b"])) and min(r["bytes"], r["entries"], r["rows"]) >= 0)


def _ints(xs) -> bool:
    return isinstance(xs, list) and all(type(x) is int and x >= 0 for x in xs)


# ---- shards -------------------------------------------------------------------------------------------------


def write_shard(root: Path, codec: str, batch: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> dict:
    """Write ``batch`` ({key: (rows (n, *feature), scales (n,) or None)}) as a new, not yet visible shard.

    Returns:
        The shard's manifest record: name, bytes, checksums, entries and rows.
    """
    datas = [np.ascontiguousarray(d) for d, _ in batch.values()]
    lengths = [d.shape[0] for d in datas]
    header = json.dumps({"codec": codec, "feature_shape": list(datas[0].shape[1:]), "rows": sum(lengths),
                         "keys": list(batch), "offsets": [0, *itertools.accumulate(lengths)][:-1],
                         "lengths": lengths}).encode()
    prefix = MAGIC + struct.pack("<Q", len(header)) + header
    parts = [prefix + bytes(_pad(len(prefix))), *(_raw_bytes(d) for d in datas)]
    if CODECS[codec].scaled:
        parts += [bytes(_pad(sum(map(len, parts)))), _raw_bytes(np.concatenate([s for _, s in batch.values()]))]
    name = f"shard-{uuid.uuid4().hex}.bin"
    checksum = hashlib.blake2b(digest_size=32)
    for p in parts:
        checksum.update(p)
    atomic_write(root / name, parts)
    return {"name": name, "bytes": sum(map(len, parts)), "blake2b": checksum.hexdigest(),
            "header_blake2b": _blake(header), "entries": len(batch), "rows": sum(lengths)}


def read_header(root: Path, rec: dict, manifest: dict) -> Shard:
    """Read and validate one shard's header (its keys and row spans) without touching its arrays.

    Raises:
        StoreCorrupted: the file is missing, truncated, not a shard, or its header is damaged or inconsistent.
    """
    path = root / rec["name"]
    with open(_open(path), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        start = f.read(16)
        n = struct.unpack("<Q", start[8:])[0] if len(start) == 16 else -1
        if size != rec["bytes"] or start[:8] != MAGIC or not 0 <= n <= min(size - 16, _MAX_HEADER):
            raise StoreCorrupted(
                f"{path} is truncated or not a DiskStore shard ({size} bytes, {rec['bytes']} expected)"
            )
        header = f.read(n)
    if _blake(header) != rec["header_blake2b"]:
        raise StoreCorrupted(f"{path} has a damaged header (checksum mismatch)")
    try:
        h = json.loads(header)
        shard = Shard(rec, h["keys"], h["offsets"], h["lengths"], *_layout(16 + n, rec, manifest))
    except (ValueError, KeyError, TypeError) as e:
        raise StoreCorrupted(f"{path} has an unreadable header ({type(e).__name__}: {e})") from None
    _check_header(path, h, shard, manifest)
    return shard


def _layout(header_end: int, rec: dict, manifest: dict) -> tuple[int, int, int]:
    """(data start, scales start, file size) that a shard of ``rec["rows"]`` rows must have."""
    codec = CODECS[manifest["codec"]]
    data_start = header_end + _pad(header_end)
    end = data_start + rec["rows"] * math.prod(manifest["feature_shape"] or []) * codec.storage.itemsize
    if not codec.scaled:
        return data_start, end, end
    return data_start, end + _pad(end), end + _pad(end) + rec["rows"] * SCALE_DTYPE.itemsize


def _check_header(path: Path, h: dict, shard: Shard, manifest: dict) -> None:
    """Refuse a header whose spans leave the file, overlap, or disagree with the manifest."""
    rec, keys = shard.record, shard.keys
    same = (h.get("codec") == manifest["codec"] and h.get("feature_shape") == manifest["feature_shape"]
            and h.get("rows") == rec["rows"] and isinstance(keys, list) and all(isinstance(k, str) for k in keys)
            and len(set(keys)) == len(keys) == rec["entries"] and _ints(shard.offsets) and _ints(shard.lengths)
            and len(shard.offsets) == len(shard.lengths) == len(keys))
    spans = sorted(zip(shard.offsets, shard.lengths)) if same else []
    inside = same and all(o + n <= rec["rows"] for o, n in spans)
    disjoint = inside and all(a[0] + a[1] <= b[0] for a, b in itertools.pairwise(spans))
    if not disjoint or shard.size != rec["bytes"]:
        raise StoreCorrupted(
            f"{path} has an invalid header: row spans out of range or overlapping, or shape x dtype "
            f"({shard.size} bytes) does not match the file ({rec['bytes']} bytes)"
        )


def map_shard(root: Path, shard: Shard, manifest: dict, verify: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Memory-map a shard's rows (rows, *feature) and scales (rows,), after checking its size and checksum.

    Args:
        verify: hash the whole file first (once per process is enough: shards never change).
    Raises:
        StoreCorrupted: the file is missing, has another size, or fails its checksum.
    """
    rec, codec, path = shard.record, CODECS[manifest["codec"]], root / shard.record["name"]
    fd = _open(path)
    try:
        size = os.fstat(fd).st_size
        if size != rec["bytes"]:
            raise StoreCorrupted(f"{path} has {size} bytes, the manifest says {rec['bytes']}: truncated or replaced")
        if verify and _hash_fd(fd) != rec["blake2b"]:
            raise StoreCorrupted(f"{path} fails its checksum: the file was altered or damaged after it was written")
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)  # keeps its own descriptor
    finally:
        os.close(fd)
    feature = manifest["feature_shape"] or []
    data = np.frombuffer(mm, codec.storage, count=rec["rows"] * math.prod(feature), offset=shard.data_start)
    scales = np.frombuffer(mm, SCALE_DTYPE, count=rec["rows"], offset=shard.scales_start) if codec.scaled else None
    return data.reshape(rec["rows"], *feature), scales


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise StoreCorrupted(f"{path} is named in the manifest but missing") from None


# ---- conversion to the current format -------------------------------------------------------------------------


def convert(path, dest=None, segment_bytes: int = 64 << 20) -> Path:
    """Rewrite the format-1 store at ``path`` in the current format, in place or (``dest``) into a new directory.

    In place, the new files are built in a sibling directory first and moved in; ``store.json`` moves last, so a
    conversion killed midway leaves the old store readable by ``convert`` again. Returns the converted path.

    Raises:
        StoreCorrupted: the old store is damaged; ValueError: a key is not an ``lr.digest`` hex digest.
    """
    from .codecs import decode
    from .disk import DiskStore
    from .store_files import STORE

    path = Path(path).absolute()
    manifest = parse_manifest((path / MANIFEST).read_bytes(), path / MANIFEST)
    scratch = path.with_name(f"{path.name}.convert-{uuid.uuid4().hex[:8]}")
    target = Path(dest).absolute() if dest is not None else scratch
    try:
        new = DiskStore(target, codec=manifest["codec"], segment_bytes=segment_bytes)
        codec = CODECS[manifest["codec"]]
        for rec in manifest["shards"]:
            shard = read_header(path, rec, manifest)
            data, scales = map_shard(path, shard, manifest, verify=True)
            if codec.scaled:  # re-encoding int8 from its decoded floats would round twice: copy the bytes instead
                _put_raw(new, shard, data, scales)
                continue
            new.put_many(shard.keys, [decode(np.array(data[o : o + n]), None, codec, "cpu", None)
                                      for o, n in zip(shard.offsets, shard.lengths)])
        new.close()
        if manifest["fingerprint"] is not None and new.fingerprint_parts is None:
            from ..fingerprint import Fingerprint

            new.bind_fingerprint(Fingerprint(manifest["fingerprint"]))
    except BaseException:
        if dest is None:
            shutil.rmtree(target, ignore_errors=True)
        raise
    if dest is not None:
        return target
    names = sorted(os.listdir(target), key=lambda n: n == STORE)  # store.json last: it makes the store new
    for name in names:
        os.replace(target / name, path / name)
    from .files import fsync_dir

    fsync_dir(path)  # the new store is durable before the old files go
    os.rmdir(target)
    for rec in manifest["shards"]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path / rec["name"])
    os.unlink(path / MANIFEST)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path / ".lock")
    return path


def _put_raw(store, shard: Shard, data: np.ndarray, scales: np.ndarray) -> None:
    """Add int8 entries with their stored bytes and scales unchanged (bypassing the encoder)."""
    from .files import key_bytes

    key_bytes(shard.keys)  # refuses keys that are not digests, naming the fix
    have = store.contains_many(shard.keys)
    with store._lock:
        new = {}
        for k, o, n, h in zip(shard.keys, shard.offsets, shard.lengths, have):
            if not h and k not in store._buffer and k not in new:
                new[k] = (int(o), int(n))
        if new:
            rows = np.concatenate([np.arange(o, o + n) for o, n in new.values()])
            store._buffer.add(list(new), np.array(data[rows]), np.array(scales[rows]), [n for _, n in new.values()], {})
        if store._buffer.nbytes >= store.segment_bytes:
            store.flush()
