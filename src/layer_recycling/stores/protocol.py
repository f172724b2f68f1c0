"""The store Protocols: ``Store``, the verbs the library calls on any store, and ``SharedStore``, what only a store
that many processes open (a ``DiskStore``) can do beside them."""

from __future__ import annotations

from typing import Iterable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from ..fingerprint import Fingerprint

VERBS = ("contains_many", "get_many", "get_stored", "put_many", "checks_many", "flush", "volume", "bind_fingerprint",
         "codec", "fingerprint_parts", "__len__")
SHARED_VERBS = ("path", "refresh", "compact", "open_snapshot", "as_writer")


@runtime_checkable
class Store(Protocol):
    """Anything that maps content keys (str) to per-example states (tensors, first dim ragged): what the library
    calls on a store, and nothing more (the stores also answer ``key in store``, ``store[key]`` and iteration).

    ``codec`` names how values are kept (``"native"``, ``"float16"``, ...) and is part of the fingerprint.
    Beside each entry a store keeps the digest of its inputs that ``put_many(keys, values, checks=...)`` gives
    (None: none given) and answers it in ``checks_many(keys)``; so a ``key=`` function that gives two different
    inputs one key is caught against entries stored by earlier runs too (see ``pipeline.Pipeline.missing``).
    ``fingerprint_parts`` is None until the store is bound to a bottom; ``bind_fingerprint`` records it (or
    refuses). A ``NullStore`` implements it and keeps nothing: then nothing is filled, loaders yield model inputs,
    and the bottom runs on every batch.
    """

    codec: str
    fingerprint_parts: dict[str, str] | None

    def __len__(self) -> int: ...

    def contains_many(self, keys: Sequence[str]) -> np.ndarray:
        """A bool array: whether each of ``keys`` is stored."""
        ...

    def get_many(
        self, keys: Sequence[str], device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> list[torch.Tensor]:
        """The states of ``keys`` in order, converted to ``dtype`` on ``device``; KeyError names a missing key."""
        ...

    def get_stored(self, keys: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """The states of ``keys`` as kept, not converted, where they are kept (a DiskStore: the host):
        (values, side) per key. Values keep the stored dtype (float16 stays float16; int8 stays int8 codes,
        with a float32 side record per row (n, side): its scale, its kept values and their columns; side is None
        for every other codec). ``codecs.dequantize(values, side, dtype)`` converts them on any device: a loader
        sends them to an accelerator at their stored size and converts them there."""
        ...

    def put_many(self, keys: Iterable[str], values: Iterable[torch.Tensor],
                 checks: Iterable[str | None] | None = None) -> None:
        """Add entries (the first copy of a key wins); they are readable at once, durable after ``flush``."""
        ...

    def checks_many(self, keys: Sequence[str]) -> list[str | None]:
        """The input digest stored with each of ``keys`` (None: none was given, or the key is not stored)."""
        ...

    def flush(self) -> None:
        """Make every entry added so far durable."""
        ...

    def volume(self) -> int:
        """Bytes the entries take (on disk for a disk store, in memory for a memory store)."""
        ...

    def bind_fingerprint(self, fingerprint: Fingerprint) -> None:
        """Record ``fingerprint`` in an empty store, or check it against the recorded one."""
        ...


@runtime_checkable
class SharedStore(Store, Protocol):
    """A store every process that opens ``path`` sees (a ``DiskStore``): only such a store is filled by the ranks
    of a process group together, each computing a share, or by Ray's tasks. Each process writes its own segments;
    ``compact`` merges what all committed into one generation, which every process then opens by name."""

    @property
    def path(self) -> object: ...

    def refresh(self) -> None:
        """See entries other processes made durable since."""
        ...

    def compact(self) -> str | None:
        """Merge what was added into one readable generation and return its name (None: nothing to name)."""
        ...

    def open_snapshot(self, generation: str | None) -> None:
        """Read generation ``generation`` (as ``compact`` returned it in some process) and what came after."""
        ...

    def as_writer(self, writer: str) -> SharedStore:
        """The same store opened again by a writer of this name (a task's own segments: a retried task replaces
        what its failed attempt committed instead of adding copies)."""
        ...


def check_store(store: object) -> Store:
    """``store`` itself if it implements the Protocol; else a TypeError naming what is missing."""
    if not isinstance(store, Store):
        missing = [v for v in VERBS if not hasattr(store, v)]
        raise TypeError(
            f"store={type(store).__name__} does not implement the store Protocol (missing: {', '.join(missing)}); "
            f"use lr.MemoryStore(), lr.DiskStore(path), or store=None for no caching"
        )
    return store
