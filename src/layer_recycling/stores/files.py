"""What every DiskStore file shares: typed errors, all-or-nothing writes, checksums and signed JSON.

Nothing here unpickles: JSON is parsed as JSON, arrays are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

_HEX = re.compile(r"[0-9a-f]{64}")


class StoreCorrupted(RuntimeError):
    """A store file is truncated, altered or not a DiskStore file; nothing in it is served."""


class DiskFull(OSError):
    """The disk (or quota) ran out while writing; entries committed before are intact."""


def is_hex(s) -> bool:
    return isinstance(s, str) and bool(_HEX.fullmatch(s))


# ---- checksums and signed JSON ---------------------------------------------------------------------------------


def blake(data) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def signed(doc: dict) -> bytes:
    # Every JSON file carries its own checksum: a flipped bit never turns into a different valid document.
    return canonical({"blake2b": blake(canonical(doc)), "doc": doc})


def read_signed(path: Path, what: str) -> dict:
    """The document in ``path``, checked against its own checksum.

    Raises:
        StoreCorrupted: not JSON, or the checksum fails; FileNotFoundError: no such file.
    """
    raw = path.read_bytes()
    try:
        outer = json.loads(raw.decode("utf-8"))
        doc, checksum = outer["doc"], outer["blake2b"]
        ok = isinstance(doc, dict) and checksum == blake(canonical(doc))
    except (ValueError, KeyError, TypeError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise StoreCorrupted(f"{path} is not a valid {what} ({type(e).__name__}: {e})") from None
    if not ok:
        raise StoreCorrupted(f"{path} fails its checksum: the {what} was altered or damaged")
    return doc


def hash_fd(fd: int) -> str:
    """blake2b of a whole file, read in 1 MiB chunks (not mapped: hashing must not grow the process's memory)."""
    h, pos = hashlib.blake2b(digest_size=32), 0
    while chunk := os.pread(fd, 1 << 20, pos):
        h.update(chunk)
        pos += len(chunk)
    return h.hexdigest()


def hash_file(path: Path) -> str:
    fd = open_ro(path)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


def open_ro(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise StoreCorrupted(f"{path} is named by a committed index but missing") from None


def load_npy(path: Path, checksum: str, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """Memory-map an index array after checking its checksum, dtype and shape (never unpickles)."""
    if hash_file(path) != checksum:
        raise StoreCorrupted(f"{path} fails its checksum: the index was altered or damaged after it was written")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise StoreCorrupted(f"{path} is not a valid .npy index ({type(e).__name__}: {e})") from None
    if arr.dtype != dtype or arr.shape != shape:
        raise StoreCorrupted(f"{path} holds {arr.dtype}{arr.shape}, expected {dtype}{shape}")
    return arr


def npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


# ---- writing ---------------------------------------------------------------------------------------------------


def atomic_write(path: Path, parts, sync_dir: bool = True, finish: Callable[[int], None] | None = None) -> None:
    """Write ``parts`` (bytes or uint8 arrays; a list, or an iterable that makes them as they are written) to
    ``path`` all-or-nothing: temp, fsync, rename, fsync the dir. ``finish(fd)`` runs after the last part (to
    patch a header whose content the parts decided).

    Raises:
        DiskFull: no space (or quota) left; the temp file is removed and ``path`` is unchanged.
    """
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    needed = sum(map(len, parts)) if isinstance(parts, list) else None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for p in parts:
                write_all(fd, p)
            if finish is not None:
                finish(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFull(
            e.errno, f"no space left writing {path}: {needed if needed is not None else 'more'} bytes needed, "
            f"{shutil.disk_usage(path.parent).free} free. Entries committed before are intact; free space or move "
            f"the store, then fill again to resume",
        ) from e
    if sync_dir:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # a rename itself must survive a power loss
    finally:
        os.close(dir_fd)


def write_all(fd: int, data) -> None:
    if isinstance(data, np.ndarray):
        data = data.reshape(-1).view(np.uint8)
    view = memoryview(data).cast("B")
    while len(view):
        view = view[os.write(fd, view):]


def pad(n: int, align: int = 64) -> int:
    return -n % align


def raw_bytes(a: np.ndarray) -> np.ndarray:
    """The bytes of ``a`` as a flat uint8 array (no copy when contiguous; works for empty arrays too)."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def create_once(path: Path, data: bytes) -> bool:
    """Create ``path`` with ``data`` unless it exists (hard link of a synced temp): of racing creators one wins.

    Returns whether this call created it.
    """
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        created = True
    except FileExistsError:
        created = False
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)
    return created
