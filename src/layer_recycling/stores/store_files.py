"""The store-wide files: ``store.json`` (format, codec), ``fingerprint.json``, the store's digest, and cleaning up
leftovers."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from pathlib import Path

from .._version import __version__
from .codecs import CODECS
from .files import DigestMismatch, StoreCorrupted, blake, canonical, checksummed, create_once, is_hex, read_checksummed
from .segments import FORMAT, SEGMENT, files_of
from .snapshot import CURRENT, SNAPSHOT

STORE = "store.json"
FINGERPRINT = "fingerprint.json"
_OURS = re.compile(r"(seg-[A-Za-z0-9_.-]{1,80}-[0-9]{6}(\.[0-9a-f]{12}\.(data|keys\.npy|spans\.npy|checks\.npy)|\.json)"
                   r"|snap-g[0-9]{6}-[0-9a-f]{8}\.(json|keys\.npy|loc\.npy)|CURRENT|store\.json|fingerprint\.json)"
                   r"(\.[0-9a-f]{8}\.tmp)?")


def create(path: Path, codec: str, readonly: bool) -> None:
    if readonly:
        raise FileNotFoundError(f"no DiskStore at {path} (no {STORE}); open it with readonly=False to create one")
    outer = next((p for p in path.parents if (p / STORE).is_file()), None)
    if outer is not None:
        raise ValueError(f"cannot create a DiskStore in {path}: it is inside the DiskStore at {outer}, whose files "
                         f"and cleanup() would mix with its own. Pass a directory outside any store")
    try:
        path.mkdir(parents=True, exist_ok=True)
        foreign = [p.name for p in path.iterdir() if not _OURS.fullmatch(p.name)]
        if foreign:
            raise ValueError(f"{path} holds other files ({', '.join(sorted(foreign)[:3])}) but no {STORE}: it is not "
                             f"a DiskStore. Pass a new or empty directory.")
        if not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, "not writable")
        created_by = f"layer_recycling {__version__}"
        create_once(path / STORE, checksummed({"format": FORMAT, "codec": codec, "created_by": created_by}))
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):  # /proc/x, a path through a file: say which and why
            raise FileNotFoundError(err.errno, f"cannot create a DiskStore in {path} ({err.strerror}): expected a "
                                    f"directory that exists or can be made, on a filesystem that holds files") from None
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise PermissionError(f"cannot create a DiskStore in {path}: the directory is read-only ({err.strerror}); "
                              f"expected a writable directory for a new store: pass one (readonly=True opens an "
                              f"existing store for reading only)") from None


def read_store(path: Path) -> dict:
    try:
        doc = read_checksummed(path / STORE, "store header")
    except FileNotFoundError:
        raise FileNotFoundError(f"no DiskStore at {path} (no {STORE}); open it with readonly=False") from None
    if not (doc.get("format") == FORMAT and doc.get("codec") in CODECS and isinstance(doc.get("created_by"), str)):
        raise StoreCorrupted(f"{path / STORE} is not a store header of format {FORMAT} (got format "
                             f"{doc.get('format')!r}, codec {doc.get('codec')!r})")
    return doc


DIGEST_FORMAT = 1  # what a digest covers, versioned: a change of definition changes every digest


def digest_of(store: dict, fingerprint: dict | None, snapshot_header: dict | None, unmerged: list[dict]) -> str:
    """A store's digest: blake2b over the canonical JSON of the documents that decide every byte it serves.

    They are ``store.json`` (format, codec), ``fingerprint.json`` (None: none), the current generation's header (it
    holds the checksums of its key and location files and, in order, the headers of the segments it covers) and the
    headers of the committed segments it does not cover, by name (each holds its data, key, span and check files'
    checksums). A JSON file is read only in its canonical form, so a byte of any file changes the digest, or fails
    the checksum a header holds for that file when it is read. Uncommitted entries are not covered.
    """
    return blake(canonical({"digest_format": DIGEST_FORMAT, "store": store, "fingerprint": fingerprint,
                            "snapshot": snapshot_header, "unmerged": unmerged}))


def check_pin(path: Path, pinned: str, got: str) -> None:
    """Refuse a store whose digest is not the pinned one.

    Raises:
        DigestMismatch: naming both digests.
    """
    if got != pinned:
        raise DigestMismatch(
            f"{path} has digest {got}, but it was opened with digest={pinned!r}: it is not the store published under "
            f"that digest (a segment, an index, fingerprint.json or store.json was changed, added or removed). Get "
            f"the store again from its source; open it without digest= only if you trust it as it is"
        )


def check_pin_argument(digest: object, readonly: bool) -> None:
    """Raises: ValueError: ``digest`` is not a 64-char hex digest, or the store is not opened read-only."""
    if not is_hex(digest):
        raise ValueError(f"digest={str(digest)[:80]!r}: expected the 64 lowercase hex characters store.digest() "
                         f"returns")
    if not readonly:
        raise ValueError("digest= pins a store for reading: open it with readonly=True (a write would change its "
                         "digest)")


def cleanup(path: Path, snapshot, headers: dict, grace: float) -> int:
    """Delete our files that no committed header nor the current generation names, older than ``grace`` s."""
    live = {STORE, FINGERPRINT, CURRENT}
    for _, h in headers.values():
        live.update(files_of(h))
    if snapshot is not None:
        for h in snapshot.header["segments"]:
            live.update(files_of(h)[1:])
        live.update(f"snap-{snapshot.generation}.{x}" for x in ("json", "keys.npy", "loc.npy"))
    now, removed = time.time(), 0
    for entry in os.scandir(path):
        if (entry.name in live or not _OURS.fullmatch(entry.name) or SEGMENT.fullmatch(entry.name)
                or entry.is_dir(follow_symlinks=False)):  # a directory under one of our names is not ours to remove
            continue
        with contextlib.suppress(FileNotFoundError):
            if now - entry.stat(follow_symlinks=False).st_mtime >= grace:
                os.unlink(entry.path)
                removed += 1
    return removed


__all__ = ["CURRENT", "FINGERPRINT", "SNAPSHOT", "STORE", "check_pin", "check_pin_argument", "cleanup", "create",
           "digest_of", "read_store"]
