"""A persistent store on disk: immutable segments, one writer each, and a merged memory-mapped key index.

No lock: every writer writes only its own files, commits by one atomic rename, and a merge publishes a new
generation by replacing ``CURRENT``. Format: ``segments.py`` and ``snapshot.py``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..fingerprint import Fingerprint
from . import snapshot as snap
from .buffer import Commit, WriteBuffer, encode_batch, new_entries
from .codecs import CODECS, codec_name, decode, describe, stored
from .binkeys import key_bytes, key_strs, maybe_key_bytes
from .files import (
    MAX_FINGERPRINT_BYTES, DigestMismatch, DiskFull, StoreCorrupted, checksummed, create_once, read_checksummed,
)
from .segments import FORMAT, SEGMENT, WRITER, RowReader, Segment, write_segment
from .store_files import STORE, FINGERPRINT, check_pin, check_pin_argument, cleanup, create, digest_of, read_store
from .view import NO_CHECK, SCHEME, View, checks_in, filters_in, scan, unmerged_segments

__all__ = ["DigestMismatch", "DiskFull", "DiskStore", "StoreCorrupted"]

MAX_OPEN_FILES = 256  # data file descriptors one store keeps open per process
# Segments a writer commits at once, each in its thread: while one waits for its fsync the next is written, so
# the disk never idles while the buffer refills.
IN_FLIGHT = 2
SEGMENT_ENTRIES = 1 << 16  # a buffer's keys are a dict: small entries commit by count, not only at segment_bytes


def _commit_if_alive(ref: weakref.ref) -> None:
    """A store's exit hook: commit what it still buffers if it is alive when the interpreter exits (entries are
    readable at once but durable only when committed: misses stored while serving would be lost). Holds the store
    by a weak reference, so a store let go is collected as any object."""
    store = ref()
    if store is not None:
        store.flush()


class DiskStore:
    """Per-example states in a directory, ragged (dim 0 varies per entry, trailing dims are fixed per store).

    ``put_many`` buffers entries (readable in this process at once); a segment commits when the buffer holds
    ``segment_bytes`` or ``SEGMENT_ENTRIES`` entries, on ``flush()`` and on ``close()`` (``with DiskStore(...)
    as store:`` closes it). A writable store still alive when the interpreter exits commits its buffer then (a
    ``weakref.finalize`` the store owns, gone with the store); a store let go unclosed before that loses what it
    buffered since its last commit, never what was committed. A key already stored is kept, never overwritten.

    Args:
        path: the store's directory; created (with its parents) when it holds no store yet.
        codec: None (a new store keeps float32; an existing one keeps its own), ``"float32"``, ``"float16"``,
            ``"bfloat16"`` or ``"int8"`` (stored as ``"int8-outliers"``: a scale and the 4 largest values of each
            row kept exactly; ``codecs.error_bound`` states its error), or the matching torch dtype. A store of
            the earlier int8 (``"int8"``, one scale per row) opens with None and is read, never written.
        readonly: open a finished store without writing anything. A store in a directory this process cannot
            write (a read-only disk, another user's folder) opens so without it, and refuses writes.
        writer: this writer's name (letters, digits, ``._-``); default: a fresh run id plus the pid. A retried
            task that passes its own name (``"ray-task-7"``) replaces its segments instead of adding copies.
        segment_bytes: buffer size at which a segment commits. A fill holds up to IN_FLIGHT + 1 such buffers: one
            filling while full ones commit in threads.
        compact_after: merge automatically once this many segments are not in the snapshot.
        digest: open the store only if ``digest()`` is this (as its maker published it), with ``readonly=True``;
            the store then serves what it held at open and nothing committed later (``refresh`` keeps it).
    Raises:
        StoreCorrupted: a store file is damaged, or not a regular file.
        DigestMismatch: ``digest`` was given and the store's differs.
    """

    def __init__(self, path: str | os.PathLike, codec: str | torch.dtype | None = None, readonly: bool = False,
                 writer: str | None = None, segment_bytes: int = 64 << 20, compact_after: int = 64,
                 digest: str | None = None):
        if digest is not None:
            check_pin_argument(digest, readonly)
        if writer is not None and not WRITER.fullmatch(writer):
            raise ValueError(f"writer={writer!r}: expected 1-80 letters, digits, '.', '_' or '-'")
        if Path(path).is_file():
            raise NotADirectoryError(f"DiskStore({str(path)!r}): that is a file; a store is a directory (new or "
                                     f"holding a store). Pass a directory path")
        self._setup(Path(path).absolute(), readonly, writer, segment_bytes, compact_after)
        requested = codec_name(codec)
        if not os.path.lexists(self.path / STORE):  # a link or a pipe there is refused by read_store, not replaced
            create(self.path, requested or "float32", readonly)
        self._store = read_store(self.path)
        self.codec = self._store["codec"]
        if requested is not None and requested != self.codec:
            raise ValueError(
                f"{self.path} holds a {describe(self.codec)} store, but codec={codec!r} was asked for; open it with "
                f"codec=None (or {self.codec!r}), or use a new path for a {requested!r} store"
            )
        if not readonly and not os.access(self.path, os.W_OK):
            # A finished store on a read-only disk or a shared folder still serves: open it for reading only.
            self.readonly = True
            self._why_readonly = "is in a directory this process cannot write, so it opened for reading only, as " \
                                 "with readonly=True,"
        self._refresh()
        if digest is not None:
            self._pin(digest)
        if writer is not None:  # a later session of a named writer goes on from its last segment, never over it
            merged = [f"{h['name']}.json" for h in self._snap.header["segments"]] if self._snap else []
            self._seq = 1 + max((int(m["seq"]) for m in map(SEGMENT.fullmatch, [*self._headers, *merged])
                                 if m and m["writer"] == writer), default=-1)
        if not self.readonly:
            self.cleanup()
            weakref.finalize(self, _commit_if_alive, weakref.ref(self))  # at exit, if alive; gone with the store

    def _setup(self, path: Path, readonly: bool, writer, segment_bytes: int, compact_after: int) -> None:
        self.path, self.readonly, self._writer = path, readonly, writer
        self._why_readonly = "was opened with readonly=True"
        self.segment_bytes, self.compact_after = segment_bytes, compact_after
        self._pid, self._run, self._seq = os.getpid(), uuid.uuid4().hex[:8], 0
        self._snap: snap.Snapshot | None = None
        self._view: View | None = None  # the committed entries this process sees; set by _refresh
        self._known: dict[tuple[str, str], Segment] = {}  # (name, token) -> Segment: maps survive a refresh
        self._headers: dict[str, tuple[int, dict]] = {}  # committed header file -> (inode, header)
        self._buffer = WriteBuffer(segment_bytes)  # uncommitted entries: bounded by segment_bytes, not the store
        self._spare: tuple | None = None  # a committed buffer's arrays, for the next buffer of a fill to reuse
        self._committing: list[tuple[WriteBuffer, Commit]] = []  # full buffers, each written by a thread
        self._fp_cache, self._bound = None, None
        self._pinned: str | None = None  # the digest this store was opened with: its view is kept as opened
        self._lock = threading.RLock()
        self._open_files: OrderedDict[str, Segment] = OrderedDict()  # data files open here, least recent first
        self._filters_shared: tuple | None = None  # see _shared_filters

    # ---- pickling: path and settings travel, maps reopen lazily in the new process ------------------------

    def __getstate__(self) -> dict:
        return {"path": str(self.path), "readonly": self.readonly, "writer": self._writer, "bound": self._bound,
                "segment_bytes": self.segment_bytes, "compact_after": self.compact_after, "digest": self._pinned,
                "filters": self._shared_filters()}

    def __setstate__(self, state: dict) -> None:
        self._setup(Path(state["path"]), state["readonly"], state["writer"], state["segment_bytes"],
                    state["compact_after"])
        self._bound = state["bound"]
        self._store = read_store(self.path)
        self.codec = self._store["codec"]
        self._refresh(given=filters_in(state.get("filters")))
        if state.get("digest") is not None:  # a worker that reopens a pinned store checks it again
            self._pin(state["digest"])

    # ---- dict verbs -----------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"DiskStore({str(self.path)!r}, {len(self)} entries, codec={self.codec})"

    def _all_keys(self) -> np.ndarray:
        self._after_fork()
        parts = self._view.keys()
        for buffer in self._buffers():
            parts.append(key_bytes(list(buffer.entries)))
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, "S20")

    def __len__(self) -> int:
        count = self._view.count()
        return count if count is not None and not any(self._buffers()) else len(self._all_keys())

    def __iter__(self) -> Iterator[str]:
        return iter(key_strs(self._all_keys()))

    def __contains__(self, key: object) -> bool:
        return bool(self.contains_many([key])[0])

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.get_many([key])[0]

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self.put_many([key], [value])

    def refresh(self) -> None:
        """See segments other writers committed and the generation ``CURRENT`` names now (a store opened with
        ``digest=`` keeps what it was opened with)."""
        self._refresh()

    def open_snapshot(self, generation: str | None) -> None:
        """Open generation ``generation`` (as ``compact`` returned it) plus segments committed after it."""
        with self._locked():
            if self._pinned is not None and generation != (self._snap.generation if self._snap else None):
                raise ValueError(f"{self!r} was opened with digest={self._pinned!r} and serves generation "
                                 f"{self._snap.generation if self._snap else None!r} only; got {generation!r}")
            if generation is not None and (self._snap is None or self._snap.generation != generation):
                self._snap = snap.load(self.path, generation, None, self._known)
            self._refresh(keep_snapshot=generation is not None)

    def contains_many(self, keys: Sequence[str]) -> np.ndarray:
        found = self._locate(keys)[0]
        if not found.all():
            self._refresh()  # entries another process committed since become visible
            found = self._locate(keys)[0]
        return found

    def volume(self) -> int:
        return self.info()["bytes"]

    def digest(self, verify: bool = True) -> str:
        """One blake2b digest (64 hex chars) of the committed store this object serves: ``store.json``,
        ``fingerprint.json``, the current generation and every committed segment's files, through the checksums
        their headers hold (``store_files.digest_of`` says exactly what). Equal on every reopen and in every
        process; uncommitted entries do not count. ``DiskStore(path, readonly=True, digest=d)`` opens the store
        only if it is the one ``d`` was computed from.

        ``verify``: first check every file against its checksum (reads the whole store once); without it only
        the headers are read, and a damaged file is refused when first read, as always.

        Raises:
            StoreCorrupted: ``verify`` and a file fails its checksum.
        """
        with self._locked():
            self._refresh()
            if verify:
                for seg in self._view.segments:
                    seg.verify()
            snapshot = self._snap.header if self._snap is not None else None
            return digest_of(self._store, self._fingerprint_doc(), snapshot, [s.header for s in self._view.unmerged])

    def _pin(self, digest: str) -> None:
        """Refuse this store unless its digest is ``digest``; then keep its view (and fingerprint) as they are."""
        check_pin(self.path, digest, self.digest(verify=False))
        self._pinned = digest

    @property
    def fingerprint_parts(self) -> dict[str, str] | None:
        return self._fingerprint_doc() or self._bound

    def _fingerprint_doc(self) -> dict[str, str] | None:
        """``fingerprint.json``'s parts (None: none yet; read again until there are, unless pinned)."""
        if self._fp_cache is None and self._pinned is None:
            with contextlib.suppress(FileNotFoundError):
                doc = read_checksummed(self.path / FINGERPRINT, "fingerprint", MAX_FINGERPRINT_BYTES)
                if not all(isinstance(v, str) for v in doc.values()):
                    raise StoreCorrupted(f"{self.path / FINGERPRINT} holds parts that are not strs")
                self._fp_cache = doc
        return self._fp_cache

    def bind_fingerprint(self, fingerprint: Fingerprint) -> None:
        """Record ``fingerprint`` in a store that has none, or check it against the recorded one."""
        if self.fingerprint_parts is None and self.readonly:
            self._bound = dict(fingerprint.parts)  # nothing may be written: remember it in this object only
        elif self.fingerprint_parts is None:
            create_once(self.path / FINGERPRINT, checksummed(dict(fingerprint.parts)))  # the first writer's wins
        fingerprint.check(self.fingerprint_parts, where=repr(self))

    def get_many(
        self, keys: Sequence[str], device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> list[torch.Tensor]:
        """The states of ``keys`` in order, decoded to ``dtype`` (default: the codec's float) on ``device``.

        Raises:
            KeyError: a key is not stored.
            StoreCorrupted: the segment holding a key fails its checksum or size check.
        """
        if not len(keys):
            return []
        raw, scales, lengths = self._gather(keys)
        return list(decode(raw, scales, CODECS[self.codec], device, dtype).split(lengths))

    def get_stored(self, keys: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """The states of ``keys`` as stored, not converted (see ``Store.get_stored``); errors as ``get_many``."""
        if not len(keys):
            return []
        raw, scales, lengths = self._gather(keys)
        values, row_scales = stored(raw, scales, CODECS[self.codec])
        parts = row_scales.split(lengths) if row_scales is not None else [None] * len(lengths)
        return list(zip(values.split(lengths), parts))

    def _gather(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
        """(the rows of ``keys``, in order, in one buffer of stored bytes; their row scales; rows per key)."""
        with self._locked():  # a put in another thread may retire a buffer (and reuse its array) between the two
            found, segs, spans = self._locate(keys)
            if not found.all():
                self._refresh()
                found, segs, spans = self._locate(keys)
            if not found.all():
                key = keys[int(np.argmin(found))]
                raise KeyError(f"key {key!r} is not in the store ({len(self)} entries at {self.path}); fill it first")
            return self._read(keys, segs, spans)

    # ---- lookup: one searchsorted per index for the whole batch ----------------------------------------------

    def _locate(self, keys: Sequence) -> tuple[np.ndarray, list, np.ndarray]:
        """(found mask, Segment or None per key, spans (n, 2)); buffered keys have segment None."""
        with self._locked():
            where, spans = self._view.search(*maybe_key_bytes(list(keys)))
            found = where >= 0
            segs = [self._view.segments[w] if w >= 0 else None for w in where]
            for buffer in filter(None, self._buffers()):  # an empty buffer holds nothing to look at
                for j, k in enumerate(keys):
                    if not found[j] and isinstance(k, str) and k in buffer:
                        found[j] = True
            return found, segs, spans

    def _buffers(self) -> list[WriteBuffer]:
        """The buffers whose entries are readable here but not committed: the current one, and those committing."""
        return [self._buffer] + [pending for pending, _ in self._committing]

    def _holder(self, key: str) -> WriteBuffer:
        return next(b for b in self._buffers() if key in b)

    def _read(self, keys, segs, spans) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
        """Gather the rows into one buffer (a pread per entry), to be decoded once and cut per entry."""
        codec, feature = CODECS[self.codec], self._feature()
        lengths = spans[:, 1].tolist()
        for j in (j for j, s in enumerate(segs) if s is None):  # buffered: not committed yet
            lengths[j] = self._holder(keys[j]).entries[keys[j]][1]
        raw = np.empty((sum(lengths), *feature), codec.storage)
        scales = codec.side_array(len(raw))
        reader = RowReader(raw, scales)
        at = 0
        for k, seg, lo, n in zip(keys, segs, spans[:, 0].tolist(), lengths):
            if seg is None:
                data, sc = self._holder(k).rows(k)
                raw[at : at + n] = data
                if scales is not None:
                    scales[at : at + n] = sc
            elif n:
                reader.read(seg, lo, n, at)
            at += n
        self._note_open({id(s): s for s in segs if s is not None}.values())
        return raw, scales, lengths

    def _note_open(self, used) -> None:
        """Keep at most MAX_OPEN_FILES data files open (a 100M-entry store has thousands of segments), closing
        the least recently used; recency is tracked only once that many are open."""
        full = len(self._open_files) >= MAX_OPEN_FILES
        for seg in used:
            if full:
                self._open_files.pop(seg.name, None)
            if seg.name not in self._open_files:
                self._open_files[seg.name] = seg
        while len(self._open_files) > MAX_OPEN_FILES:
            self._open_files.popitem(last=False)[1].close_file()

    def _locked(self) -> threading.RLock:
        """The store's lock, after ``_after_fork``: a child must not wait on a copy a parent's thread held."""
        self._after_fork()
        return self._lock

    def _after_fork(self) -> None:
        if os.getpid() != self._pid:  # the parent's buffer is the parent's to commit; maps stay valid
            self._pid, self._seq, self._committing, self._spare = os.getpid(), 0, [], None
            self._buffer = WriteBuffer(self.segment_bytes)
            self._lock = threading.RLock()  # a thread of the parent may have held it at the fork

    # ---- the directory: segments and the current generation ------------------------------------------------

    def _shared_filters(self) -> tuple | None:
        """The unmerged segments' filters as (scheme, names, sizes, one tensor in shared memory), moved there once per
        set of segments: a DataLoader worker that unpickles this store (spawn) maps them instead of building its own
        (2-4 B per unmerged entry in every worker). This process's filters then read the shared copy."""
        filters = self._view.filters
        if not filters:
            return None
        if self._filters_shared is None or self._filters_shared[1] != list(filters):
            sizes = [len(f.bits) for f in filters.values()]
            block = torch.from_numpy(np.concatenate([f.bits for f in filters.values()])).share_memory_()
            for f, part in zip(filters.values(), np.split(block.numpy(), np.cumsum(sizes)[:-1])):
                f.bits = part
            self._filters_shared = (SCHEME, list(filters), sizes, block)
        return self._filters_shared

    def _refresh(self, keep_snapshot: bool = False, given: dict | None = None) -> None:
        with self._locked():
            if self._pinned is not None:  # a pinned store serves what its digest covers, nothing committed later
                return
            if not keep_snapshot:
                current = snap.read_current(self.path)
                if current is not None and (self._snap is None or current[0] != self._snap.generation):
                    self._snap = snap.load(self.path, *current, self._known)
            self._headers = scan(self.path, self._headers)
            unmerged = unmerged_segments(self.path, self._snap, self._headers, self._known)
            self._view = View(self.path, self._snap, unmerged, self.codec, self._view, given)

    def _feature(self) -> list[int] | None:
        return self._view.feature() or next((b.feature() for b in self._buffers() if b), None)

    def cleanup(self, grace: float = 3600.0) -> int:
        """Delete files no committed index names (killed writers' leftovers, old generations) older than ``grace``
        seconds: younger ones may belong to a writer still committing. Returns how many were deleted."""
        if self.readonly:
            return 0
        return cleanup(self.path, self._snap, self._headers, grace)

    # ---- writing --------------------------------------------------------------------------------------------

    def checks_many(self, keys: Sequence[str]) -> list[str | None]:
        """The input digest each key's entry was stored with (``put_many(checks=)``), None where none was."""
        with self._locked():
            found, segs, _ = self._locate(keys)
            out: list[str | None] = [None] * len(keys)
            by_segment: dict[int, list[int]] = {}
            for j, (seg, hit) in enumerate(zip(segs, found)):
                if hit and seg is None:
                    out[j] = self._holder(keys[j]).checks.get(keys[j])
                elif hit:
                    by_segment.setdefault(id(seg), []).append(j)
            for js in by_segment.values():
                for j, check in zip(js, checks_in(segs[js[0]], key_bytes([keys[j] for j in js]))):
                    out[j] = check
            return out

    def put_many(self, keys: Iterable[str], values: Iterable[torch.Tensor],
                 checks: Iterable[str | None] | None = None) -> None:
        """Buffer new entries (readable here at once, durable after ``flush``); keys already stored are skipped.

        ``checks``: per entry, a hex digest of the inputs its state came from (``checks_many`` returns it later).

        Raises:
            TypeError / ValueError: a key is not a hex digest (use ``lr.digest``), a value not a floating tensor
                of >= 1 dim, its trailing shape differs from the store's, or the codec cannot hold its values.
            PermissionError: the store was opened with ``readonly=True`` or in a read-only directory.
            DiskFull: no space left (when a segment commits); the store is as it was before that commit.
        """
        if self.readonly:
            raise PermissionError(
                f"{self!r} {self._why_readonly} and refuses new entries; to fill it, open "
                f"it with readonly=False in a writable directory (copy it to one), or serve it with readonly=True "
                f"and recycle(..., store_misses=False)"
            )
        keys, values = list(keys), list(values)
        checks = list(checks) if checks is not None else [None] * len(keys)
        if not len(keys) == len(values) == len(checks):
            raise ValueError(f"put_many got {len(keys)} keys, {len(values)} values and {len(checks)} checks")
        key_bytes(keys)
        key_bytes([c for c in checks if c is not None])
        with self._locked():
            keys, values, fresh = new_entries(keys, values, checks, self._feature(), self._buffers())
            if keys:
                self._buffer.add(keys, *encode_batch(keys, values, CODECS[self.codec]), [v.shape[0] for v in values],
                                 fresh)
            self._finish_commits(wait=False)  # see the segments written, reuse a buffer, raise an error
            if self._buffer.nbytes >= self.segment_bytes or len(self._buffer) >= SEGMENT_ENTRIES:
                if len(self._committing) >= IN_FLIGHT:  # memory stays under IN_FLIGHT + 1 buffers
                    self._committing[0][1].join()
                    self._finish_commits(wait=False)
                job = self._segment_of_buffer()
                if job is not None:  # the next entries buffer while a thread writes and syncs this segment
                    self._committing.append((self._buffer, Commit(lambda: write_segment(*job))))
                    self._buffer, self._spare = WriteBuffer(self.segment_bytes, self._spare), None

    def flush(self) -> None:
        """Commit the buffered entries as one segment (durable when this returns)."""
        with self._locked():
            self._finish_commits(wait=True)
            self._spare = None  # a flush ends a fill: its arrays are not kept for the next one
            if not self._buffer or self.readonly:
                return
            job = self._segment_of_buffer()
            if job is not None:
                write_segment(*job)
                self._buffer = WriteBuffer(self.segment_bytes)
                self._committed()

    def _segment_of_buffer(self) -> tuple | None:
        """``write_segment``'s arguments for the buffer's entries not committed meanwhile (None: all were), under
        the next segment name."""
        if not self._buffer:  # a merge that ran while this put waited for a commit may have flushed it
            return None
        committed = self._view.search(key_bytes(list(self._buffer.entries)), np.ones(len(self._buffer), bool))[0] >= 0
        feature = self._feature()
        keys, rows, scales, lengths, checks = self._buffer.take(~committed)  # the first copy of a key wins
        if not keys:
            self._buffer = WriteBuffer(self.segment_bytes, self._buffer.arrays())
            return None
        name = f"seg-{self._writer or f'{self._run}-{os.getpid()}'}-{self._seq:06d}"
        self._seq += 1
        check_bytes = key_bytes([checks.get(k, NO_CHECK) for k in keys]) if checks else None
        return (self.path, name, uuid.uuid4().hex[:12], self.codec, feature, key_bytes(keys), rows, lengths, scales,
                check_bytes)

    def _finish_commits(self, wait: bool) -> None:
        """Finish the commits in flight: all of them (``wait``), or those whose thread is done. Done: their entries
        are read from the new segments. Failed: they go back in the buffer (nothing is lost; the next flush
        commits them) and the first error is raised here."""
        done, error, running = False, None, []
        for pending, thread in self._committing:
            if wait:
                thread.join()
            if thread.is_alive():
                running.append((pending, thread))
            elif thread.error is not None:
                pending.extend(self._buffer)
                self._buffer, error = pending, error or thread.error
            else:
                done, self._spare = True, self._spare or pending.arrays()  # one kept: the next buffer takes it
        self._committing = running
        if error is not None:
            raise error
        if done:
            self._committed()

    def _committed(self) -> None:
        self._refresh()
        if len(self._view.unmerged) > self.compact_after:
            self.compact()

    def compact(self) -> str | None:
        """Merge every committed segment into a new generation and publish it; returns its name (None: empty).

        Data files are never rewritten; a merge killed midway leaves readers on the previous generation.
        """
        if self.readonly:
            raise PermissionError(f"{self!r} {self._why_readonly} and compact() writes; open it with readonly=False "
                                  f"in a writable directory")
        with self._locked():
            self.flush()
            self._refresh()
            if not self._view.unmerged:
                return self._snap.generation if self._snap else None
            generation = snap.merge(self.path, self._snap, self._view.unmerged)
            self.open_snapshot(generation)
            return generation

    def as_writer(self, writer: str) -> DiskStore:
        """This store opened again by writer ``writer`` (its own segments; see ``writer=``), as this one was."""
        return type(self)(self.path, readonly=self.readonly, writer=writer, segment_bytes=self.segment_bytes,
                          compact_after=self.compact_after)

    def close(self) -> None:
        """Commit what is buffered and drop this process's maps; the store reopens them lazily if used again."""
        if not self.readonly:
            self.flush()
        for seg in self._known.values():
            seg.drop_maps()

    def __enter__(self) -> DiskStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def info(self) -> dict:
        """Entries, bytes on disk, codec, feature shape, fingerprint, segments, snapshot generation, unmerged."""
        size = 0
        for f in self._view.files():
            with contextlib.suppress(FileNotFoundError):
                size += os.lstat(self.path / f).st_size
        return {
            "path": str(self.path), "format": FORMAT, "entries": len(self), "bytes": size, "codec": self.codec,
            "feature_shape": self._feature(), "fingerprint": self.fingerprint_parts,
            "created_by": self._store["created_by"], "segments": len(self._headers),
            "snapshot": self._snap.generation if self._snap else None, "unmerged": len(self._view.unmerged),
            "rows": sum(s.header["rows"] for s in self._view.segments), "buffered": sum(map(len, self._buffers())),
        }

