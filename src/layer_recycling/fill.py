"""Fill: run the frozen bottom once per distinct example the store lacks, and check stored entries later.

Functions here take the ``pipeline.Pipeline`` of a recycled model: its bottom, store, keys and counters.
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

from . import data, distributed
from .keys import digest
from .stores.codecs import CODECS, LOSSLESS, check_error, error_bound
from .stores.files import StoreCorrupted
from .stores.sizes import check_room

if TYPE_CHECKING:
    from .pipeline import Pipeline

StatesOf = Callable[[list[str], list[dict]], list[torch.Tensor]]  # (keys, unpadded inputs) -> their states
Locate = Callable[[str], str]  # key -> the example in words, for errors ("example 7")


@dataclasses.dataclass
class VerifyReport:
    """Result of re-computing a sample of stored entries (see ``Recycled.verify``)."""

    checked: int
    mismatched: list[str]
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return not self.mismatched


def compute(pipe: Pipeline, pending: dict[str, dict], batch_size: int, states_of: StatesOf | None = None,
            locate: Locate | None = None, room: Callable[[list[torch.Tensor]], None] | None = None) -> int:
    """Run the bottom on ``pending`` (key -> unpadded inputs) in length-sorted batches and store the states;
    returns how many were stored. The first batch also measures the store's codec against its stated bound.

    ``states_of(keys, rows)`` replaces the bottom (a stacked fill reads a lower store and runs the middle).
    ``locate(key)`` names an example in errors. ``room(states)`` sees the first batch's states before they are
    stored (a fill's check that the store's disk has room for all of it).
    """
    keys = list(pending)
    if pipe.arch.masked:  # similar lengths together: less padding to compute
        keys.sort(key=lambda k: data.length(pending[k]), reverse=True)
    device = pipe.device
    states_of = states_of or (lambda _, rows: pipe.bottom_states(rows, device))
    for start in range(0, len(keys), batch_size):
        chunk = keys[start : start + batch_size]
        rows = [pending[k] for k in chunk]
        states = states_of(chunk, rows)
        if room is not None and start == 0:
            room(states)
        put(pipe, chunk, states, rows, locate, measure=start == 0)
        pipe.stats.stored += len(chunk)
    return len(keys)


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


def input_check(inputs: dict) -> str:
    """A digest of an example's model inputs: kept beside an entry stored under a user's key, so that a key
    given to two different inputs is caught (a content key is this digest already)."""
    return digest(data.key_fields(inputs))


def put(pipe: Pipeline, keys: list[str], states: list, rows: list[dict], locate: Locate | None = None,
        measure: bool = False) -> None:
    """Store ``states`` under ``keys``; entries keyed by a user's ``key=`` keep a digest of their inputs.

    Raises:
        ValueError: a state holds NaN or inf (unless ``allow_nonfinite``), or (``measure``) the store's codec
            exceeds its stated error bound on these states; nothing of the batch is stored.
    """
    locate = locate or (lambda _: "an example")
    if not pipe.config.allow_nonfinite:
        refuse_nonfinite(keys, states, locate)
    codec = CODECS.get(pipe.store.codec)
    if measure and codec is not None and states and len({tuple(s.shape[1:]) for s in states}) == 1:
        check_error(states, codec, lambda i: f"{locate(keys[i])} (key {keys[i][:12]}...)")
    checks = [input_check(r) for r in rows] if pipe.key_fn is not None else None
    pipe.store.put_many(keys, states, checks=checks)


def refuse_nonfinite(keys: list[str], states: list[torch.Tensor], locate: Locate) -> None:
    """Refuse states holding NaN or inf, naming the first such example (one device sync for the batch)."""
    if not states:
        return
    if bool(torch.isfinite(torch.cat([s.reshape(-1) for s in states])).all()):  # one op for the batch
        return
    finite = torch.stack([torch.isfinite(s).all() for s in states]).cpu()  # which one, to name it
    i = int((~finite).nonzero()[0, 0])
    s = states[i]
    raise ValueError(
        f"{locate(keys[i])} (key {keys[i][:12]}...) has a state with {int(torch.isnan(s).sum())} NaN and "
        f"{int(torch.isinf(s).sum())} inf among its {s.numel()} values: the bottom overflowed (float16 weights or "
        f"autocast?) or its inputs or weights hold NaN. Nothing of this batch was stored. Fix the example or the "
        f"model, or store them as they are with recycle(..., allow_nonfinite=True) (a float codec; int8 cannot)"
    )


def check_stored(pipe: Pipeline, keys: list[str], rows: list[dict]) -> list[str]:
    """The keys among ``keys`` (all stored) whose entry was computed from other inputs than ``rows``."""
    if pipe.key_fn is None or not keys:
        return []
    was = pipe.store.checks_many(keys)
    return [k for k, w, r in zip(keys, was, rows) if w is not None and w != input_check(r)]


def refuse_stale(keys: list[str]) -> None:
    if keys:
        raise ValueError(
            f"key= gives {len(keys)} example(s) (first key {keys[0][:12]}...) the key of an entry the store holds, "
            f"stored earlier from different model inputs: the store would serve that entry's state for them. Make "
            f"the key function unique per input (e.g. include every field that changes the inputs), or use a new "
            f"store"
        )


def missing(pipe: Pipeline, keyed: Iterable[tuple[str, dict]]) -> dict[str, dict]:
    """The (key -> inputs) of ``keyed`` that the store lacks, each key once.

    Raises:
        ValueError: a ``key=`` function gave one key to two different inputs (their states would be mixed up),
            within ``keyed`` or against an entry stored earlier from other inputs.
    """
    keyed = list(keyed)
    if pipe.key_fn is not None:
        check_collisions(keyed)
    first: dict[str, dict] = {}
    for key, inputs in keyed:
        first.setdefault(key, inputs)
    keys = list(first)
    stored = pipe.store.contains_many(keys) if keys else []
    held = [k for k, h in zip(keys, stored) if h]
    refuse_stale(check_stored(pipe, held, [first[k] for k in held]))
    return {k: first[k] for k, h in zip(keys, stored) if not h}


def check_collisions(keyed: list[tuple[str, dict]]) -> None:
    """Refuse a user key given to two different inputs of ``keyed`` ((key, inputs) pairs): one stored state
    would serve both."""
    seen: dict[str, tuple[int, str]] = {}  # key -> (first example, digest of its inputs)
    for i, (key, inputs) in enumerate(keyed):
        _check_collision(seen, key, i, inputs)


def _check_collision(seen: dict[str, tuple[int, str]], key: str, i: int, inputs: dict) -> None:
    check = input_check(inputs)
    j, was = seen.setdefault(key, (i, check))
    if was != check:
        raise ValueError(
            f"key= gave examples {j} and {i} the same key {key[:12]}... but their model inputs differ: one stored "
            f"state would serve both. Make the key function unique per input (e.g. include every field that "
            f"changes the inputs), or drop key= to key by content"
        )


CHUNK = 4096  # examples keyed, checked and computed at a time: a fill's memory does not grow with the dataset

# (chunk, this rank's share of pending keys, the chunk's names for errors) -> entries added
Step = Callable[[list[tuple[str, dict]], Callable[[dict], dict], Locate], int]


def fill(pipe: Pipeline, examples: Iterable[Any], batch_size: int = 32, progress: bool = True,
         group: Any = None) -> int:
    """Run the bottom once per distinct example not yet stored; returns how many entries were added.

    ``examples`` are read once, in chunks of ``CHUNK``: a generator, or a ``datasets.Dataset`` row by row, is
    never held whole. In a process group each rank computes its share.
    """
    if not pipe.store.keeps:
        return 0  # a NullStore keeps nothing: no need to key the examples either
    return fill_keyed(pipe, keyed(pipe, examples), batch_size, progress, group, total=size_of(examples))


def keyed(pipe: Pipeline, examples: Iterable[Any]) -> Iterator[tuple[str, dict]]:
    """(key, unpadded model inputs) of each example, as they are read."""
    for i, example in enumerate(examples):
        key, inputs, _ = pipe.encode(example, f"example {i}")
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
        pending = missing(pipe, chunk)
        room = None
        if total and pending and not seen[1]:  # the first misses: all ranks' (one disk), over what is left to read
            seen[1] = True
            expected = math.ceil(len(pending) / len(chunk) * max(total - seen[0], len(chunk)))
            room = lambda states: check_room(pipe.store, states, expected, pipe.key_fn is not None)  # noqa: E731
        seen[0] += len(chunk)
        return compute(pipe, mine(pending), batch_size, states_of, locate, room)

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
    pipes = [p for p in pipes if p.store.keeps]
    if not pipes:
        return 0  # a NullStore keeps nothing: the bottom runs on every batch instead
    ranks = distributed.active_group(group)
    if ranks is not None and not all(p.store.shared for p in pipes):
        distributed.warn_unshared(next(p.store for p in pipes if not p.store.shared))
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
    if not pipe.store.keeps:
        raise ValueError("verify() needs a store that keeps entries; this model was made with store=None")
    stored: dict[str, dict] = {}
    collided: dict[str, None] = {}
    checks: dict[str, str] = {}
    for key, inputs, _ in map(pipe.encode, examples):
        stored.setdefault(key, inputs)
        if pipe.key_fn is not None:
            check = input_check(inputs)
            if checks.setdefault(key, check) != check:  # one key, two different inputs
                collided[key] = None
    held = pipe.store.contains_many(list(stored)) if stored else []
    stored = {k: v for (k, v), h in zip(stored.items(), held) if h}
    stale = check_stored(pipe, list(stored), list(stored.values()))  # entries made from other inputs, any run
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
