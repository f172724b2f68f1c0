"""A persistent store on disk: immutable memory-mapped shards, made visible only by an atomically written manifest.

Crash-safe, checksummed, pickle-free; processes share a store through a lock file. Format: ``shards.py``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..fingerprint import Fingerprint
from .codecs import CODECS, SCALE_DTYPE, codec_name, decode, encode
from .shards import (
    MANIFEST, DiskFull, Shard, StoreCorrupted, atomic_write, is_ours, manifest_bytes, map_shard, new_manifest,
    parse_manifest, read_header, write_shard,
)

__all__ = ["DiskFull", "DiskStore", "StoreCorrupted"]

LOCK = ".lock"
_MAX_MAPS = 256  # maps open per process: each holds a file descriptor


class DiskStore:
    """Per-example states in a directory, ragged (dim 0 varies per entry, trailing dims are fixed per store).

    Each ``put_many`` call writes its new entries as one immutable shard and commits it by rewriting
    ``manifest.json`` atomically, so entries are durable when it returns (``fill`` never calls ``flush``);
    pass batches of a few MB rather than single entries. A key already stored is kept, never overwritten.

    Args:
        path: the store's directory; created (with its parents) when it holds no store yet.
        dtype: the codec: None (a new store keeps float32; an existing one keeps its own), ``"float32"``,
            ``"float16"``, ``"bfloat16"`` or ``"int8"`` (per-row absmax scale), or the matching torch dtype.
        readonly: open a finished store without writing anything (not even a lock file).
    Raises:
        StoreCorrupted: the manifest or a shard header is damaged.
        FingerprintMismatch: (from ``bind_fingerprint``) the store was filled by a different bottom.
    """

    def __init__(self, path: str | os.PathLike, dtype: str | torch.dtype | None = None, readonly: bool = False):
        self._setup(Path(path).absolute(), readonly)  # absolute: a spawned worker may start elsewhere
        requested = codec_name(dtype)
        if not (self.path / MANIFEST).exists():
            self._create(requested or "float32")
        self._refresh()
        if requested is not None and requested != self.codec:
            raise ValueError(
                f"{self.path} holds a {self.codec!r} store, but dtype={dtype!r} was asked for; open it with "
                f"dtype=None (or {self.codec!r}), or use a new path for a {requested!r} store"
            )
        if not readonly:
            with self._locked():  # under the lock: another writer's temp files are never in flight here
                self._refresh()
                self._remove_orphans()

    def _setup(self, path: Path, readonly: bool) -> None:
        self.path, self.readonly = path, readonly
        self.codec = ""
        self._pid, self._maps, self._verified, self._lock_fd = os.getpid(), OrderedDict(), set(), None
        self._stat, self._manifest, self._shards, self._index = None, {}, {}, {}
        self._bound: dict[str, str] | None = None  # a read-only store's fingerprint, held in memory
        self._thread_lock = threading.Lock()  # flock does not exclude threads sharing one descriptor

    # ---- pickling: path and config travel, maps and descriptors reopen in the new process -------------

    def __getstate__(self) -> dict:
        return {"path": str(self.path), "readonly": self.readonly, "bound": self._bound}

    def __setstate__(self, state: dict) -> None:
        self._setup(Path(state["path"]), state["readonly"])
        self._bound = state["bound"]
        self._refresh()

    # ---- dict verbs -----------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"DiskStore({str(self.path)!r}, {len(self)} entries, codec={self.codec})"

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._index))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._find(key) is not None

    def refresh(self) -> None:
        """See entries other processes committed since this object last looked."""
        self._refresh()

    keeps = True
    shared = True  # every process that opens the directory sees the same entries

    def contains_many(self, keys: Sequence[str]) -> np.ndarray:
        return np.fromiter((k in self for k in keys), dtype=bool, count=len(keys))

    def volume(self) -> int:
        return self.info()["bytes"]

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.get_many([key])[0]

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self.put_many([key], [value])

    @property
    def fingerprint_parts(self) -> dict[str, str] | None:
        return self._manifest.get("fingerprint") or self._bound

    def get_many(
        self, keys: Sequence[str], device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> list[torch.Tensor]:
        """The states of ``keys`` in order, decoded to ``dtype`` (default: the codec's float) on ``device``.

        Raises:
            KeyError: a key is not stored.
            StoreCorrupted: the shard holding a key fails its checksum or size check.
        """
        found = []
        for key in keys:
            hit = self._find(key) if isinstance(key, str) else None
            if hit is None:
                raise KeyError(f"key {key!r} is not in the store ({len(self)} entries at {self.path}); fill it first")
            found.append(hit)
        return self._read(found, device, dtype) if found else []

    def put_many(self, keys: Iterable[str], values: Iterable[torch.Tensor]) -> None:
        """Store new entries as one shard and commit it; keys already stored are skipped.

        Raises:
            TypeError / ValueError: a key is not a str, a value not a floating tensor of >= 1 dim, its trailing
                shape differs from the store's, or the codec cannot hold its values.
            PermissionError: the store was opened with ``readonly=True``.
            DiskFull: no space left; the store is as it was before the call.
        """
        if self.readonly:
            raise PermissionError(
                f"{self!r} was opened with readonly=True and refuses new entries; open it with readonly=False "
                f"(in a writable directory) to fill it, or serve with recycle(..., store_misses=False)"
            )
        batch = self._encode(keys, values)
        if not batch:
            return
        with self._locked():
            self._refresh()  # another writer may have committed some of these keys meanwhile
            batch = {k: v for k, v in batch.items() if k not in self._index}
            if batch:
                feature = self._feature_of(batch)
                record = write_shard(self.path, self.codec, batch)
                try:
                    self._commit(shards=[*self._manifest["shards"], record], feature_shape=feature)
                except BaseException:
                    self._discard_uncommitted(record["name"])
                    raise

    def bind_fingerprint(self, fingerprint: Fingerprint) -> None:
        """Record ``fingerprint`` in a store that has none, or check it against the recorded one."""
        if self.fingerprint_parts is None and self.readonly:
            self._bound = dict(fingerprint.parts)  # nothing may be written: remember it in this object only
        elif self.fingerprint_parts is None:
            with self._locked():
                self._refresh()
                if self._manifest["fingerprint"] is None:
                    self._commit(fingerprint=dict(fingerprint.parts))
        fingerprint.check(self.fingerprint_parts, where=repr(self))

    def flush(self) -> None:
        """Nothing to do: ``put_many`` commits before it returns. Kept so callers may flush any store."""

    def close(self) -> None:
        """Drop this process's maps and lock descriptor; the store reopens them lazily if used again."""
        self._maps.clear()
        if self._lock_fd is not None and self._pid == os.getpid():
            os.close(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> DiskStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def info(self) -> dict:
        """A summary: entries, tokens (sum of first dims), bytes on disk, codec, fingerprint, created-by version."""
        records = self._manifest["shards"]
        return {
            "path": str(self.path), "entries": sum(r["entries"] for r in records), "keys": len(self._index),
            "tokens": sum(s.lengths[i] for s, i in self._index.values()), "shards": len(records),
            "bytes": sum(r["bytes"] for r in records) + (self.path / MANIFEST).stat().st_size,
            "codec": self.codec, "feature_shape": self._manifest["feature_shape"],
            "fingerprint": self.fingerprint_parts, "created_by": self._manifest["created_by"],
        }

    # ---- reading ------------------------------------------------------------------------------------------

    def _find(self, key: str) -> tuple[Shard, int] | None:
        hit = self._index.get(key)
        if hit is None:
            self._refresh()  # one stat: entries another process committed since become visible
            hit = self._index.get(key)
        return hit

    def _read(self, found: list[tuple[Shard, int]], device, dtype: torch.dtype | None) -> list[torch.Tensor]:
        """Gather the rows of ``found`` into one buffer, move and decode it once, and cut it per entry."""
        codec, lengths = CODECS[self.codec], [shard.lengths[i] for shard, i in found]
        raw = np.empty((sum(lengths), *self._manifest["feature_shape"]), codec.storage)  # (rows, *feature)
        scales = np.empty(sum(lengths), SCALE_DTYPE) if codec.scaled else None
        at = 0
        for (shard, i), n in zip(found, lengths):
            data, shard_scales = self._mapped(shard)
            lo = shard.offsets[i]
            raw[at : at + n] = data[lo : lo + n]  # touches only these rows' pages of the map
            if scales is not None:
                scales[at : at + n] = shard_scales[lo : lo + n]
            at += n
        return list(decode(raw, scales, codec, device, dtype).split(lengths))

    def _mapped(self, shard: Shard) -> tuple[np.ndarray, np.ndarray | None]:
        self._after_fork()
        name = shard.record["name"]
        maps = self._maps.get(name)
        if maps is None:
            maps = map_shard(self.path, shard, self._manifest, verify=name not in self._verified)
            self._verified.add(name)
            self._maps[name] = maps
            while len(self._maps) > _MAX_MAPS:
                self._maps.popitem(last=False)  # least recently used; it unmaps once no read holds it
        else:
            self._maps.move_to_end(name)
        return maps

    def _after_fork(self) -> None:
        if os.getpid() != self._pid:  # maps and the lock descriptor belong to the parent: reopen ours
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            self._pid, self._maps, self._lock_fd = os.getpid(), OrderedDict(), None
            self._thread_lock = threading.Lock()  # a thread of the parent may have held it at the fork

    # ---- the manifest -------------------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Re-read the manifest if another writer replaced it since this object last read it."""
        path = self.path / MANIFEST
        try:
            if _signature(os.stat(path)) == self._stat:  # one stat per miss: cheap enough for fill's checks
                return
            with open(path, "rb") as f:
                signature, raw = _signature(os.fstat(f.fileno())), f.read()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no DiskStore at {self.path} (no {MANIFEST}); open it with readonly=False to create one"
            ) from None
        self._load(parse_manifest(raw, path))
        self._stat = signature

    def _load(self, manifest: dict) -> None:
        shards, index = {}, {}
        for rec in manifest["shards"]:
            known = self._shards.get(rec["name"])
            shard = known if known is not None and known.record == rec else read_header(self.path, rec, manifest)
            shards[rec["name"]] = shard
            for i, key in enumerate(shard.keys):
                index.setdefault(key, (shard, i))  # a key twice (only by hand) serves its first copy
        self._manifest, self._shards, self._index, self.codec = manifest, shards, index, manifest["codec"]

    def _commit(self, **changes) -> None:
        """Write the manifest with ``changes`` atomically (caller holds the lock) and adopt it."""
        manifest = {**self._manifest, **changes}
        path = self.path / MANIFEST
        atomic_write(path, [manifest_bytes(manifest)])
        self._load(manifest)
        self._stat = _signature(os.stat(path))

    def _create(self, codec: str) -> None:
        if self.readonly:
            raise FileNotFoundError(f"no DiskStore at {self.path} (no {MANIFEST}); open it with readonly=False")
        from .. import __version__  # here, not at import time: the package imports this module

        self.path.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if (self.path / MANIFEST).exists():
                return  # another process created it meanwhile
            foreign = [p.name for p in self.path.iterdir() if p.name != LOCK and not is_ours(p.name)]
            if foreign:
                raise ValueError(
                    f"{self.path} holds other files ({', '.join(sorted(foreign)[:3])}) but no {MANIFEST}: it is "
                    f"not a DiskStore. Pass a new or empty directory."
                )
            manifest = new_manifest(codec, created_by=f"layer_recycling {__version__}")
            atomic_write(self.path / MANIFEST, [manifest_bytes(manifest)])

    def _discard_uncommitted(self, name: str) -> None:
        """Delete a shard whose commit failed, unless the manifest on disk names it after all."""
        with contextlib.suppress(OSError):
            if name.encode() not in (self.path / MANIFEST).read_bytes():
                os.unlink(self.path / name)

    def _remove_orphans(self) -> None:
        """Delete temp files and shards no manifest names: what killed writers left behind."""
        live = set(self._shards)
        for entry in os.scandir(self.path):
            if is_ours(entry.name) and entry.name not in live:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    @contextlib.contextmanager
    def _locked(self):
        import fcntl  # POSIX only: imported here so that reading stays possible where it is missing

        self._after_fork()
        if self._lock_fd is None:
            try:
                self._lock_fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise PermissionError(
                    f"cannot write to {self.path} ({e.strerror}); open a finished store with readonly=True"
                ) from e
        with self._thread_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # ---- writing ------------------------------------------------------------------------------------------

    def _encode(self, keys: Iterable[str], values: Iterable[torch.Tensor]) -> dict:
        """{key: (bytes (n, *feature), scales (n,) or None)} for the keys not stored yet, first copy wins."""
        batch, codec = {}, CODECS[self.codec]
        for key, value in zip(keys, values, strict=True):
            if not isinstance(key, str):
                raise TypeError(f"store keys are str content digests, got {type(key).__name__}; use lr.digest(obj)")
            if not (isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() >= 1):
                got = f"{value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else \
                    type(value).__name__
                raise TypeError(f"store values are floating tensors of >= 1 dim (n, ...), got a {got} for key {key!r}")
            if key not in batch and key not in self._index:
                batch[key] = encode(value, codec, key)
        self._feature_of(batch)
        return batch

    def _feature_of(self, batch: dict) -> list[int] | None:
        """The store's trailing shape, checked against every entry of ``batch``."""
        expected = self._manifest["feature_shape"]
        for key, (data, _) in batch.items():
            expected = list(data.shape[1:]) if expected is None else expected
            if list(data.shape[1:]) != expected:
                raise ValueError(
                    f"entry {key!r} has shape {tuple(data.shape)}, but this store holds entries of shape "
                    f"({', '.join(['n', *map(str, expected)])}): dim 0 may vary, trailing dims may not. Use one "
                    f"store per state shape."
                )
        return expected


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    """What changes when the manifest is replaced: os.replace gives it a new inode."""
    return st.st_ino, st.st_mtime_ns, st.st_size
