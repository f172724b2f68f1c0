"""What every DiskStore file shares: typed errors, safe reads, all-or-nothing writes, checksums and checksummed JSON.

Nothing here unpickles: JSON is parsed as JSON, arrays are mapped after their .npy header is parsed as data. Every
file is opened as a regular file without following links, and its size is checked before it is read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import mmap
import os
import re
import shutil
import stat
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

_HEX = re.compile(r"[0-9a-f]{64}")


class StoreCorrupted(RuntimeError):
    """A store file is truncated, altered or not a DiskStore file; nothing in it is served."""


class DigestMismatch(StoreCorrupted):
    """A store opened with ``digest=`` has another digest: it is not the store that digest was published for."""


class DiskFull(OSError):
    """The disk (or quota) ran out while writing; entries committed before are intact."""


def is_hex(s) -> bool:
    return isinstance(s, str) and bool(_HEX.fullmatch(s))


# ---- reading: regular files only, sizes checked before reading --------------------------------------------------

MAX_JSON_BYTES = 1 << 20  # a store's JSON files: headers are about 500 bytes
MAX_FINGERPRINT_BYTES = 16 << 20  # a fingerprint holds a model's config: a few KB, more for a large nested one
MAX_SNAPSHOT_JSON_BYTES = 1 << 28  # a generation's header lists every segment's header: 400k segments of ~600 B
NPY_HEADER_MAX = 4096  # an index file's .npy header: 128 bytes as written


def open_regular(path: Path, what: str) -> tuple[int, os.stat_result]:
    """A read-only descriptor of ``path`` and its stat, if it is a regular file in place.

    Never follows a symbolic link (it could serve another file's bytes, or a device that reads forever) and never
    waits (``O_NONBLOCK``: opening a FIFO for reading would block until a writer came).

    Raises:
        FileNotFoundError: no such file (callers say what that means);
        StoreCorrupted: a symbolic link, a directory, a FIFO, a device or a socket where a ``what`` belongs.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:  # O_NOFOLLOW met a link
            raise StoreCorrupted(f"{path} is a symbolic link (to {_target(path)}), where a {what} belongs: a "
                                 f"DiskStore reads only regular files in its own directory. If you trust the "
                                 f"target, replace the link with a copy of the file") from None
        if e.errno == errno.ENXIO:  # a socket
            raise StoreCorrupted(f"{path} is a socket, where a {what} belongs: a DiskStore reads only regular "
                                 f"files") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise StoreCorrupted(f"{path} is a {_kind(st.st_mode)}, where a {what} belongs: a DiskStore reads only "
                             f"regular files. Remove it and get the store again from its source")
    return fd, st


def _kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "directory", stat.S_ISFIFO: "FIFO (named pipe)", stat.S_ISCHR: "character device",
             stat.S_ISBLK: "block device", stat.S_ISSOCK: "socket"}
    return next((name for test, name in kinds.items() if test(mode)), f"special file (mode {mode:o})")


def _target(path: Path) -> str:
    try:
        return repr(os.readlink(path))
    except OSError:
        return "?"


def read_bounded(path: Path, what: str, limit: int) -> bytes:
    """The bytes of regular file ``path``, refused unread when it holds more than ``limit``.

    Raises:
        FileNotFoundError: no such file; StoreCorrupted: not a regular file, or too large.
    """
    fd, st = open_regular(path, what)
    try:
        if st.st_size > limit:
            raise StoreCorrupted(f"{path} holds {st.st_size} bytes; a {what} holds at most {limit}: it was replaced "
                                 f"or damaged")
        return read_at(fd, st.st_size, 0, path)
    finally:
        os.close(fd)


def read_at(fd: int, n: int, offset: int, path: Path) -> bytes:
    """Exactly ``n`` bytes at ``offset`` (a file that ends early is corrupt: it shrank after its size was read)."""
    parts, got = [], 0
    while got < n:
        chunk = os.pread(fd, n - got, offset + got)
        if not chunk:
            raise StoreCorrupted(f"{path} ended at byte {offset + got}, before the {n} bytes its size promised")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def pread_into(fd: int, view: memoryview, offset: int, what: str) -> None:
    """Fill ``view`` with the bytes at ``offset`` (a file that ends early is corrupt: its size was checked)."""
    while len(view):
        got = os.preadv(fd, [view], offset)
        if got <= 0:
            raise StoreCorrupted(f"{what} ended early at byte {offset}")
        view, offset = view[got:], offset + got


# ---- checksums and checksummed JSON ----------------------------------------------------------------------------


def blake(data) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def checksummed(doc: dict) -> bytes:
    # Every JSON file carries its own checksum: a flipped bit never turns into a different valid document. A keyless
    # checksum, not a signature: anyone can recompute it. To trust a store you did not make, pin its digest.
    return canonical({"blake2b": blake(canonical(doc)), "doc": doc})


def read_checksummed(path: Path, what: str, limit: int = MAX_JSON_BYTES) -> dict:
    """The document in ``path``, checked against its own checksum (see ``parse_checksummed``).

    Raises:
        StoreCorrupted: not a regular file, too large, not JSON, or the checksum fails; FileNotFoundError: no such
            file.
    """
    return parse_checksummed(read_bounded(path, what, limit), path, what)


def parse_checksummed(raw: bytes, path: Path, what: str) -> dict:
    """The document in ``raw``, which must be exactly ``checksummed(doc)``: its checksum holds and its bytes are
    canonical, so that no byte of the file can change without changing the document (and a store's digest).

    Raises:
        StoreCorrupted: naming ``path``: not JSON, nested too deeply, not canonical, or the checksum fails.
    """
    try:
        outer = json.loads(raw.decode("utf-8"))
        doc, checksum = outer["doc"], outer["blake2b"]
        ok = isinstance(doc, dict) and checksum == blake(canonical(doc))
        exact = ok and raw == checksummed(doc)
    except RecursionError:
        raise StoreCorrupted(f"{path} is not a valid {what}: JSON nested too deeply to read") from None
    except (ValueError, KeyError, TypeError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise StoreCorrupted(f"{path} is not a valid {what} ({type(e).__name__}: {str(e)[:200]})") from None
    if not ok:
        raise StoreCorrupted(f"{path} fails its checksum: the {what} was altered or damaged")
    if not exact:
        raise StoreCorrupted(f"{path} is not in the canonical form a DiskStore writes: the {what} was rewritten")
    return doc


HASH_CHUNK = 1 << 18  # bytes hashed per read


def hash_fd(fd: int, size: int) -> str:
    """blake2b of the first ``size`` bytes of a file, read through one buffer (not mapped, and no new buffer per
    read: hashing must not grow the process's memory); a file that ends early hashes what it has, which no checksum
    matches."""
    h, pos = hashlib.blake2b(digest_size=32), 0
    view = memoryview(bytearray(min(HASH_CHUNK, size)))
    while pos < size and (got := os.preadv(fd, [view[: size - pos]], pos)):
        h.update(view[:got])
        pos += got
    return h.hexdigest()


def hash_file(path: Path, what: str) -> str:
    fd, st = open_regular(path, what)
    try:
        return hash_fd(fd, st.st_size)
    finally:
        os.close(fd)


def open_committed(path: Path, what: str) -> tuple[int, os.stat_result]:
    """``open_regular`` for a file a committed header names: missing is corrupt too."""
    try:
        return open_regular(path, what)
    except FileNotFoundError:
        raise StoreCorrupted(f"{path} is named by a committed index but missing") from None


def load_npy(path: Path, checksum: str, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """Memory-map an index array after checking its header, size and checksum (never unpickles).

    Header and size are checked before the file is read further (a huge file is refused unread); the map is made
    from the descriptor that was hashed, so the bytes mapped are the bytes checked.
    """
    fd, st = open_committed(path, "index file")
    try:
        offset = _npy_offset(fd, st.st_size, path, dtype, shape)
        if hash_fd(fd, st.st_size) != checksum:
            raise StoreCorrupted(f"{path} fails its checksum: the index was altered or damaged after it was "
                                 f"written")
        with open(fd, "rb", closefd=False) as f:
            mapped = np.memmap(f, dtype, "r", offset, shape)
        # Where its rows are, for readers that pread them instead of faulting pages in (``fenced.FileRows``).
        mapped.source = (path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), offset)
        return mapped
    finally:
        os.close(fd)


def _npy_offset(fd: int, size: int, path: Path, dtype: np.dtype, shape: tuple) -> int:
    """Where the rows of the .npy file start, once its header says ``dtype`` ``shape`` and its size agrees."""
    head = io.BytesIO(read_at(fd, min(size, NPY_HEADER_MAX), 0, path))
    try:
        version = np.lib.format.read_magic(head)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
        got_shape, fortran, got_dtype = read(head)
    except Exception as e:  # noqa: BLE001 - numpy's header parser raises many kinds (tokenize's too) on bad bytes
        raise StoreCorrupted(f"{path} is not a valid .npy index ({type(e).__name__}: {str(e)[:200]})") from None
    if got_dtype != dtype or tuple(got_shape) != tuple(shape) or fortran:
        raise StoreCorrupted(f"{path} holds {got_dtype}{tuple(got_shape)}, expected {dtype}{tuple(shape)}")
    offset = head.tell()
    expected = offset + dtype.itemsize * math.prod(shape)
    if size != expected:
        raise StoreCorrupted(f"{path} has {size} bytes, its header promises {expected}: truncated or padded")
    return offset


def npy_bytes(arr: np.ndarray) -> bytes:
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


def release(*arrays) -> None:
    """Drop the pages of memory-mapped arrays from this process (they stay in the page cache)."""
    for a in arrays:
        mm = getattr(a, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise"):
            mm.madvise(mmap.MADV_DONTNEED)
