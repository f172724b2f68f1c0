"""Shared by the DiskStore tests: keys that are digests, values derived from the key, checks of a whole store."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import torch

import layer_recycling as lr
from layer_recycling.stores import codecs
from layer_recycling.stores.disk import DiskStore

CODECS = ["float32", "float16", "bfloat16", "int8"]
FORK = mp.get_context("fork")
_NUMBER: dict[str, int] = {}


def keys(n: int, start: int = 0) -> list[str]:
    """``n`` content keys (``lr.digest`` of numbers), each remembering its number for ``value``."""
    out = []
    for i in range(start, start + n):
        k = lr.digest(("entry", i))
        _NUMBER[k] = i
        out.append(k)
    return out


def number(key: str) -> int:
    if key not in _NUMBER:
        keys(max(_NUMBER.values(), default=-1) + 5000)  # a forked or spawned process rebuilds the table
    return _NUMBER[key]


def value(key: str, feature: tuple[int, ...] = (8,)) -> torch.Tensor:
    """The state of ``key``: derived from the key alone, so any process can check it."""
    i = number(key)
    return torch.randn(i % 7, *feature, generator=torch.Generator().manual_seed(i)) * (1 + i % 5)


def chunks(xs: list, size: int):
    return (xs[i : i + size] for i in range(0, len(xs), size))


def filled(path, codec: str = "float32", n: int = 12, per_put: int = 4, feature=(8,), **kw) -> DiskStore:
    """A store of ``n`` entries committed as one segment per ``per_put`` entries."""
    store = DiskStore(path, codec=codec, **kw)
    for chunk in chunks(keys(n), per_put):
        store.put_many(chunk, [value(k, feature) for k in chunk])
        store.flush()
    return store


def assert_close(codec: str, got: torch.Tensor, want: torch.Tensor) -> float:
    """Assert ``got`` is ``want`` within the codec's stated error bound, per value; return the max abs error."""
    assert got.shape == want.shape
    if codec == "float32":
        assert torch.equal(got, want)
        return 0.0
    err = (got.double() - want.double()).abs()
    assert (err <= codecs.error_bound(want.float(), codecs.CODECS[codecs.codec_name(codec)]).double()).all()
    return float(err.max()) if err.numel() else 0.0


def store_files(path: Path) -> list[str]:
    return sorted(p.name for p in Path(path).iterdir())


def check_store(path: Path, codec: str = "float16") -> DiskStore:
    """Open the store as a crash left it: every visible entry is complete and right, none is stored twice."""
    store = DiskStore(path, readonly=True)
    names = list(store)
    assert len(set(names)) == len(names)
    for got, k in zip(store.get_many(names), names):
        assert_close(codec, got, value(k))
    return store


def fill(path: str, names: list[str], per_put: int, codec: str = "float16", writer: str | None = None,
         segment_bytes: int = 1, compact_after: int = 64) -> None:
    """Fill ``names`` (resume: only what is missing); by default every put commits a segment."""
    store = DiskStore(path, codec=codec, writer=writer, segment_bytes=segment_bytes, compact_after=compact_after)
    todo = [k for k, have in zip(names, store.contains_many(names)) if not have]
    for chunk in chunks(todo, per_put):
        store.put_many(chunk, [value(k) for k in chunk])
    store.close()


def opens_and_reads(path: Path) -> None:
    store = DiskStore(path, readonly=True)
    names = list(store)
    for got, k in zip(store.get_many(names), names):
        assert_close(store.codec, got, value(k))  # reached only if nothing was detected: then it must be right


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)
