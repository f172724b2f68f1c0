"""Fill: the bottom run once per distinct example the store lacks, in bounded chunks; and the check of stored entries.

``stream`` reads keyed examples a chunk at a time, so a fill's memory does not grow with the dataset, and in a
process group it gives each rank its share of every chunk and publishes the store at the end. What a chunk computes
is the pipeline's to say (``Pipeline.missing``, ``Pipeline.compute``: the key checks live there).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import signal
import threading
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import torch
from tqdm.auto import tqdm

from . import distributed
from .keys import digest
from .pipeline import Locate, StatesOf
from .stores.codecs import CODECS, LOSSLESS, error_bound
from .stores.files import StoreCorrupted
from .stores.sizes import check_room

if TYPE_CHECKING:
    from .pipeline import Pipeline


@dataclasses.dataclass
class VerifyReport:
    """Result of re-computing a sample of stored entries (see ``Recycled.verify``)."""

    checked: int
    mismatched: list[str]
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return not self.mismatched


class _TerminateAsExit:
    """SIGTERM (torchrun stopping a job when a rank failed, a scheduler's stop) raises ``SystemExit`` during a fill,
    so that what it computed is committed before the process ends; the default handling returns after. Only in the
    main thread, and only where SIGTERM has its default handling (a program's own handler is left alone)."""

    def __init__(self):
        self.previous = None
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self.previous = signal.signal(signal.SIGTERM, self._exit)

    @staticmethod
    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    def close(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None


CHUNK = 4096  # examples keyed, checked and computed at a time: a fill's memory does not grow with the dataset

# (chunk, this rank's share of pending keys, the chunk's names for errors) -> entries added
Step = Callable[[list[tuple[str, dict]], Callable[[dict], dict], Locate], int]


def fill(pipe: Pipeline, examples: Iterable[Any], batch_size: int = 32, progress: bool = True,
         group: Any = None) -> int:
    """Run the bottom once per distinct example not yet stored; returns how many entries were added.

    ``examples`` are read once, in chunks of ``CHUNK``: a generator, or a ``datasets.Dataset`` row by row, is
    never held whole. In a process group each rank computes its share.
    """
    if not pipe.keeps:
        return 0  # a NullStore keeps nothing: no need to key the examples either
    return fill_keyed(pipe, keyed(pipe, examples), batch_size, progress, group, total=size_of(examples))


def keyed(pipe: Pipeline, examples: Iterable[Any]) -> Iterator[tuple[str, dict]]:
    """(key, unpadded model inputs) of each example, as they are read."""
    for key, inputs, _ in pipe.encode_many(examples):
        yield key, inputs


def fill_keyed(pipe: Pipeline, keyed: Iterable[tuple[str, dict]], batch_size: int, progress: bool,
               group: Any = None, states_of: StatesOf | None = None, total: int | None = None,
               what: str = "examples to fill") -> int:
    """``fill`` for examples already keyed: (key, unpadded inputs) pairs, read once, chunk by chunk.

    ``states_of(keys, rows)`` replaces the bottom (a stacked fill reads a lower store and runs the middle).
    With ``total`` known, the first chunk's share of missing examples and its first batch's states predict the
    store's growth: a fill the disk cannot hold is refused before it writes (``sizes.check_room``).
    """
    seen = [0, False]  # examples read before this chunk; whether the room was checked

    def step(chunk: list[tuple[str, dict]], mine: Callable[[dict], dict], locate: Locate) -> int:
        pending = pipe.missing(chunk, seen[0])
        room = None
        if total and pending and not seen[1]:  # the first misses: all ranks' (one disk), over what is left to read
            seen[1] = True
            expected = math.ceil(len(pending) / len(chunk) * max(total - seen[0], len(chunk)))
            room = lambda states: check_room(pipe.store, states, expected, pipe.key_fn is not None)  # noqa: E731
        seen[0] += len(chunk)
        return pipe.compute(mine(pending), batch_size, states_of, locate, room)

    return stream([pipe], keyed, step, progress, group, total, what)


def stream(pipes: list[Pipeline], keyed: Iterable[tuple[str, dict]], step: Step, progress: bool, group: Any = None,
           total: int | None = None, what: str = "examples to fill") -> int:
    """Run ``step(chunk, mine, locate)`` over bounded chunks of ``keyed``; returns the entries added (all ranks').

    ``mine(pending)`` keeps the keys this rank computes: in a process group each key belongs to one rank (by its
    digest), so no rank needs another's view of the store, and each key is computed once. The ranks compare
    each chunk's keys before computing it (the same examples in the same order) and fail together; at the end
    ``pipes``' stores are committed and merged for every rank to read. What was computed is committed however
    the fill ends (Ctrl-C, SIGTERM, an error): a rerun resumes. ``locate`` names a chunk's examples in errors.
    """
    pipes = [p for p in pipes if p.keeps]
    if not pipes:
        return 0  # a NullStore keeps nothing: the bottom runs on every batch instead
    ranks = distributed.active_group(group)
    if ranks is not None and not all(p.shared for p in pipes):
        distributed.warn_unshared(next(p.store for p in pipes if not p.shared))
        ranks = None
    mine = (lambda pending: pending) if ranks is None else distributed.owned(ranks[1], ranks[2])
    added, read, chunks = 0, 0, _chunks(keyed, CHUNK)
    terminated = _TerminateAsExit()
    try:
        with tqdm(total=total, unit="ex", desc="fill", disable=not progress) as bar:
            while (chunk := next(chunks, None)) is not None or ranks is not None:
                if ranks is not None and not _same_chunk(chunk, ranks[0], what):
                    break  # every rank has read all its examples
                for pipe in pipes:  # every example's ids, before any of the chunk runs
                    pipe.check_rows([inputs for _, inputs in chunk], lambda i: f"example {read + i}")
                added += distributed.together(ranks, lambda: step(chunk, mine, locator(chunk, read)))
                read += len(chunk)
                bar.update(len(chunk))
    finally:
        _commit(pipes, terminated)
    if ranks is None:
        return added
    for pipe in pipes:
        publish(pipe, ranks[0], ranks[1])
    return sum(distributed.gather(added, ranks[0]))


def _same_chunk(chunk: list | None, group: Any, what: str) -> bool:
    """Whether the ranks go on (all read a chunk) or stop (none did); refused, on every rank, when they passed
    other examples or another order."""
    distributed.check_same(digest([k for k, _ in chunk]) if chunk is not None else "end", group,
                           f"{what}, or the same in another order",
                           "every rank passes the same examples in the same order, and computes its share of the "
                           "missing ones. Pass the same list on every rank")
    return chunk is not None


def locator(keyed: list[tuple[str, dict]], first: int = 0) -> Locate:
    """``locate(key)``: "example i", i its first place in ``keyed`` counted from ``first`` (searched only when an
    error needs it)."""
    return lambda key: f"example {next((first + i for i, (k, _) in enumerate(keyed) if k == key), '?')}"


def _chunks(keyed: Iterable[tuple[str, dict]], size: int) -> Iterator[list[tuple[str, dict]]]:
    it = iter(keyed)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def size_of(examples: Any) -> int | None:
    """How many examples there are, where that is known without reading them (for the progress bar)."""
    try:
        return len(examples)
    except TypeError:
        return None


def _commit(pipes: list[Pipeline], terminated: _TerminateAsExit) -> None:
    try:
        for pipe in pipes:
            pipe.store.flush()
    finally:
        terminated.close()


def publish(pipe: Pipeline, group: Any, rank: int) -> None:
    """After a fill in a process group: every rank's segments committed, merged by rank 0, opened by all.

    Raises:
        StoreCorrupted: on every rank, when one cannot open the merged index (ranks that do not share a
            directory).
    """
    distributed.barrier(group)
    pipe.store.refresh()  # every rank's segments are committed now: see them before merging
    merged = pipe.store.compact() if rank == 0 else None
    snapshot = distributed.broadcast(merged, group)  # its name travels through the group, never a listing
    try:
        pipe.store.open_snapshot(snapshot)
        error = None
    except StoreCorrupted as err:
        error = err
    failed = [r for r, e in enumerate(distributed.gather(None if error is None else str(error), group)) if e]
    if failed:  # every rank says so, not only those that failed
        cause = str(error) if error is not None else f"see rank {failed[0]}"
        raise StoreCorrupted(
            f"rank(s) {failed} cannot open the merged index {snapshot!r} that rank 0 wrote ({cause}). Do all ranks "
            f"open one directory they share ({pipe.store!r})? A store on each node's own disk is not shared: put it "
            f"on a filesystem every rank sees"
        ) from error


def _close(now: torch.Tensor, was: torch.Tensor, codec: str, rtol: float, atol: float) -> bool:
    """Whether a stored entry is what the bottom computes now, within its codec's rounding: int8 within its stated
    bound per value (``codecs.error_bound``: half the row's step, exact for its kept values), other codecs within
    ``rtol``."""
    spec = CODECS.get(codec)
    if spec is None or not spec.scaled or not now.numel():
        return torch.allclose(now, was, rtol=rtol, atol=atol)
    bound = error_bound(now, spec)
    return bool(((now.float() - was.float()).abs() <= bound * (1 + rtol) + atol).all())


def verify(pipe: Pipeline, examples: Iterable[Any], sample: int = 32, rtol: float | None = None,
           atol: float = 1e-4, seed: int = 0) -> VerifyReport:
    """Re-compute a random sample of stored entries and compare them with the store (see ``Recycled.verify``)."""
    if not pipe.keeps:
        raise ValueError("verify() needs a store that keeps entries; this model was made with store=None")
    keyed = [(key, inputs) for key, inputs, _ in pipe.encode_many(examples)]
    collided = dict.fromkeys(key for key, _, _ in pipe.collisions(keyed))  # one key, two different inputs
    stored: dict[str, dict] = {}
    for key, inputs in keyed:
        stored.setdefault(key, inputs)
    held = pipe.store.contains_many(list(stored)) if stored else []
    stored = {k: v for (k, v), h in zip(stored.items(), held) if h}
    stale = pipe.stale(list(stored), list(stored.values()))  # entries made from other inputs, any run
    keys = random.Random(seed).sample(sorted(stored), min(sample, len(stored)))
    rtol = rtol if rtol is not None else (1e-3 if pipe.store.codec in LOSSLESS else 2e-2)
    mismatched, worst = [], 0.0
    device = pipe.device
    for key in keys:
        now = pipe.bottom_states([stored[key]], device)[0]
        was = pipe.store.get_many([key], device=now.device, dtype=now.dtype)[0]
        worst = max(worst, float((now - was).abs().max()) if now.shape == was.shape else float("inf"))
        if now.shape != was.shape or not _close(now, was, pipe.store.codec, rtol, atol):
            mismatched.append(key)
    flagged = list(dict.fromkeys([*mismatched, *collided, *stale]))
    report = VerifyReport(checked=len(keys), mismatched=flagged, max_abs_diff=worst)
    if stale:
        warnings.warn(
            f"{len(stale)} stored entries were computed from other model inputs than these examples give for their "
            f"key (first: {stale[0]}): a key= shared by two inputs, or inputs that change between runs (random "
            f"augmentation). The store serves the old states for them. Make the key unique per input, or key by "
            f"content (drop key=)",
            stacklevel=3,
        )
    if collided:
        warnings.warn(
            f"key= gave {len(collided)} key(s) to more than one distinct input (first: {next(iter(collided))}): "
            f"the store serves one state for all of them. Make the key function unique per input",
            stacklevel=3,
        )
    if mismatched:
        warnings.warn(
            f"{len(mismatched)} of {len(keys)} re-computed entries differ from the store (max abs diff "
            f"{worst:.3g}): the inputs changed since they were stored (random augmentation?), so the cache "
            f"serves stale states. Key the augmented inputs (the default key) or drop the augmentation.",
            stacklevel=3,
        )
    return report
