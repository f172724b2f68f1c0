"""The view's lookups: a batch costs the same steps for 10 or 1,000 entries per segment, whatever the keys."""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from layer_recycling.stores import fenced, view
from layer_recycling.stores.disk import DiskStore

UNMERGED = 6  # segments of the main writer left unmerged; two more hold copies of its keys
MERGED = 2  # segments of the main writer merged into the snapshot first
# writer: (i % per of the keys it copies, the value it stores for key i, its checks' first hex digit)
COPIES = {"w-a": (1, lambda i: -float(i), "a"), "w-z": (2, lambda i: 1e6 + i, "f")}


def key(i: int) -> str:
    """Sequential hex keys: every one shares its first 12 bytes with every other."""
    return f"{i:040x}"


def put(store: DiskStore, ids: list[int], value, check: str) -> None:
    """Entries ``ids`` of 1-3 rows of ``value(i)``, with input digests ``check`` then i in hex."""
    store.put_many([key(i) for i in ids], [torch.full((1 + i % 3, 4), value(i)) for i in ids],
                   checks=[f"{check}{i:039x}" for i in ids])


def build(path: Path, per: int) -> tuple[DiskStore, dict[int, tuple[float, str]]]:
    """MERGED + UNMERGED segments of ``per`` sequential keys from writer w-m, copies of some of them in the
    segments of w-a (a lower name: its copies win) and w-z (a higher name: they lose), and ``per`` more entries
    buffered in w-m, which is returned with {i: (value, check)} of what every key must answer."""
    # All open before any commit: w-a and w-z do not see w-m's entries, so each writes its own copies.
    writers = {w: DiskStore(path, writer=w) for w in ("w-a", "w-z", "w-m")}
    main = writers.pop("w-m")
    for s in range(MERGED + UNMERGED):
        put(main, list(range(s * per, (s + 1) * per)), float, "c")
        main.flush()
        if s == MERGED - 1:
            main.compact()
    want = {i: (float(i), f"c{i:039x}") for i in range((MERGED + UNMERGED + 1) * per)}
    for w, (r, value, check) in COPIES.items():
        ids = [i for i in range((MERGED + UNMERGED) * per) if i % per == r]
        put(writers[w], ids, value, check)
        writers[w].flush()
        if w == "w-a":
            want.update({i: (value(i), f"{check}{i:039x}") for i in ids})
    put(main, list(range((MERGED + UNMERGED) * per, (MERGED + UNMERGED + 1) * per)), float, "c")  # buffered
    main.refresh()  # a hit in its own segments would not: it sees w-a's winning copies from now on
    return main, want


def python_steps(fn) -> int:
    """Python and C function calls while ``fn`` runs: what a loop over entries would multiply."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event in ("call", "c_call")

    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def assert_answers(store: DiskStore, ids: list[int], want: dict[int, tuple[float, str]]) -> None:
    got = store.get_many([key(i) for i in ids])
    assert [float(t[0, 0]) for t in got] == [want[i][0] for i in ids]
    assert [t.shape[0] for t in got] == [1 + i % 3 for i in ids]
    assert store.checks_many([key(i) for i in ids]) == [want[i][1] for i in ids]
    assert store.contains_many([key(i) for i in ids]).all()


@pytest.mark.parametrize("collide", [False, True], ids=["hashed", "every-hash-equal"])
def test_a_batch_costs_the_same_steps_for_10_or_1000_entries_per_segment(tmp_path, monkeypatch, collide):
    """Keys that share their leading bytes across unmerged segments, copies of keys across segments, and (with
    ``collide``) keys an adversary made to share one hash: every answer right, and a batch's steps do not grow
    with the entries (the leading-bytes index took one Python step per entry sharing a query's bytes)."""
    if collide:  # the worst keys can do: every unmerged entry a candidate for every query
        monkeypatch.setattr(view, "key_hashes", lambda keys: np.zeros(len(keys), np.uint64))
    # One block an index: a batch reads at most a block a query from an index (a read each), whatever its entries;
    # what is compared is every other step.
    monkeypatch.setattr(fenced, "FENCE", 1 << 20)
    monkeypatch.setattr(view, "FILTER_BITS", 64)  # no false hit among these keys: the same searches at both sizes
    steps, searches = {}, {}
    for per in (10, 1000):
        main, want = build(tmp_path / str(per), per)
        reader = DiskStore(tmp_path / str(per), readonly=True)  # reopened in this process
        assert reader.info()["unmerged"] == UNMERGED + 2 and reader.info()["snapshot"] is not None
        stored = [i for i in want if i < (MERGED + UNMERGED) * per]
        assert sorted(reader) == [key(i) for i in stored]
        assert_answers(reader, stored, want)
        assert_answers(main, list(want), want)
        misses = [key(i) for i in range(len(want), len(want) + 4)]  # the stored keys' leading bytes too
        assert not reader.contains_many(misses).any() and not main.contains_many(misses).any()
        # 32 keys: the first three and the last of every committed segment, copies among them; then buffered ones.
        batch = [key(s * per + r) for s in range(MERGED + UNMERGED) for r in (0, 1, 2, per - 1)]
        buffered = batch[:28] + [key(i) for i in range(len(want) - 4, len(want))]
        verbs = [(reader.contains_many, batch), (reader.get_many, batch), (reader.checks_many, batch),
                 (main.get_many, buffered), (main.contains_many, buffered + misses)]
        for verb, keys in verbs:
            verb(keys)  # maps the indexes, hashes the data files: once per process, not per batch
        steps[per] = [python_steps(lambda: verb(keys)) for verb, keys in verbs]
        searches[per] = searchsorted_calls(monkeypatch, lambda: reader.contains_many(batch))
    assert steps[1000] == steps[10]
    # Two per index searched (its fences, then its blocks read): the snapshot's and at most every unmerged
    # segment's (the filters search nothing).
    assert searches[1000] == searches[10] <= 2 * (1 + UNMERGED + 2)


def searchsorted_calls(monkeypatch, fn) -> int:
    calls, real = [], np.searchsorted
    with monkeypatch.context() as m:
        m.setattr(np, "searchsorted", lambda *a, **kw: calls.append(1) or real(*a, **kw))
        fn()
    return len(calls)


def test_keys_that_share_their_leading_bytes_hash_apart():
    """Sequential ids and a shared 8-byte prefix with a random tail: no two of 200,000 keys share a hash, as for
    digests."""
    from layer_recycling.stores.binkeys import key_bytes

    rng = np.random.default_rng(0)
    tails = rng.integers(0, 256, (100_000, 12), np.uint8)
    prefixed = np.concatenate([np.full((100_000, 8), 0xAB, np.uint8), tails], axis=1).view("S20").reshape(-1)
    for keys in (key_bytes([key(i) for i in range(100_000)]), prefixed):
        assert len(np.unique(view.key_hashes(keys))) == len(keys)


def test_a_segment_filter_holds_its_keys_and_lets_few_others_through():
    """Every key of the segment passes (a filter that dropped one would lose an entry); of keys it lacks, about
    0.06% (16 bits a key, 8 probes), so a chunk of 4,096 new keys searches an unmerged segment for a few."""
    rng = np.random.default_rng(0)
    keys = np.unique(np.frombuffer(rng.bytes(20 * 65_536), "S20"))
    others = np.frombuffer(rng.bytes(20 * 100_000), "S20")
    kept = view.KeyFilter.of(keys)
    assert kept.bits.nbytes <= len(keys) * view.FILTER_BITS // 8 * 2  # about a byte a key
    assert kept.may_hold(view.key_hashes(keys)).all()
    assert kept.may_hold(view.key_hashes(others)).mean() < 0.002


# ---- memory at open --------------------------------------------------------------------------------------------


def committed(path: Path, segments: int, per: int) -> list[str]:
    """A store of ``segments`` committed, unmerged segments of ``per`` random keys (one float16 row each), written
    as segments directly (fast at 100k entries); a key of each segment, to look up."""
    from layer_recycling.stores.binkeys import KEY_DTYPE, key_strs
    from layer_recycling.stores.segments import write_segment

    DiskStore(path, codec="float16").close()
    rng, probe = np.random.default_rng(per), []
    for s in range(segments):
        keys = np.unique(np.frombuffer(rng.bytes(20 * per), KEY_DTYPE))
        write_segment(path, f"seg-m-{s:06d}", f"{s:012x}", "float16", [1], keys,
                      [np.zeros((len(keys), 1), "<f2")], np.ones(len(keys), np.int64), None)
        probe += key_strs(keys[len(keys) // 2 :][:1])
    return probe


def open_cost(path: Path, probe: list[str]) -> tuple[int, int]:
    """(bytes still allocated, peak bytes allocated) by opening ``path`` and one lookup, as tracemalloc sees them
    (numpy's arrays included; mapped files not: they are page cache, shared by every process)."""
    tracemalloc.start()
    try:
        store = DiskStore(path, readonly=True)
        assert store.contains_many(probe).all()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return held, peak


@pytest.mark.parametrize("segments", [1, 3])
def test_opening_a_store_costs_at_most_4_bytes_per_unmerged_entry(tmp_path, segments):
    """Per entry, the only memory an open allocates is the unmerged segments' filters (2-4 bytes: 16 bits a key,
    rounded up to a power of two; none for one segment): every other index is read from its file (its fences, 0.08 B
    an entry). It was 8 B, in one array copied whole when a segment was added. Temporaries are chunked: the issue's
    store (one writer, one unmerged segment) cost 56-108 bytes per entry once malloc kept whole-index temporaries of
    24-60 bytes."""
    sizes, costs = (20_000, 100_000), []
    for per in sizes:
        probe = committed(tmp_path / str(per), segments, per)
        costs.append(open_cost(tmp_path / str(per), probe))
    entries = segments * (sizes[1] - sizes[0])
    held, peak = ((big - small) / entries for small, big in zip(*costs))
    bound = (4 if segments > 1 else 0) + 1  # + 1: temporaries of a fixed size, a little larger for the larger store
    assert held <= bound and peak <= bound, f"{held:.1f} bytes held, {peak:.1f} at the peak, per entry"


def test_a_spawned_worker_maps_the_filters_instead_of_building_its_own(tmp_path, monkeypatch):
    """A store pickled for a spawn DataLoader worker carries its unmerged segments' filters as one shared-memory
    handle: the same bytes pickled at 2,000 or 20,000 entries a segment, and the worker builds none (it did: 8 B per
    unmerged entry in every spawned worker)."""
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401 - registers torch's reductions with ForkingPickler

    sizes = {}
    for per in (2_000, 20_000):
        probe = committed(tmp_path / str(per), 3, per)
        store = DiskStore(tmp_path / str(per), readonly=True)
        assert len(store._view.filters) == 3
        sizes[per] = len(ForkingPickler.dumps(store))
        with monkeypatch.context() as m:
            m.setattr(view.KeyFilter, "of", lambda keys: pytest.fail("a worker built a filter of its own"))
            worker = ForkingPickler.loads(ForkingPickler.dumps(store))
            assert worker.contains_many(probe).all() and not worker.contains_many([key(10**6)]).any()
            assert [f.bits.tobytes() for f in worker._view.filters.values()] == [
                f.bits.tobytes() for f in store._view.filters.values()]
    assert abs(sizes[20_000] - sizes[2_000]) < 64, sizes
    # Filters made another way (a worker spawned after the code changed on disk) are built again, never misread.
    pickled, built, real = ForkingPickler.dumps(store), [], view.KeyFilter.of
    monkeypatch.setattr(view, "SCHEME", (view.FILTER_BITS, view.PROBES + 1))  # as the worker's code would say
    monkeypatch.setattr(view.KeyFilter, "of", lambda keys: built.append(1) or real(keys))
    worker = ForkingPickler.loads(pickled)
    assert len(built) == 3 and worker.contains_many(probe).all()
