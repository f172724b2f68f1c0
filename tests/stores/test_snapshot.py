"""The merged snapshot: merges killed midway, damaged pointer and snapshot files, one answer per key."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from layer_recycling.stores.disk import DiskStore, StoreCorrupted
from layer_recycling.stores.files import blake, checksummed, npy_bytes
from layer_recycling.stores.snapshot import read_current
from store_helpers import FORK, check_store, chunks, fill, keys, value


def _compact(path: str) -> None:
    DiskStore(path).compact()


def _compact_and_die(path: str, writes: int) -> None:
    """Merge, and die (SIGKILL, no cleanup) when the merge starts its ``writes + 1``-th file write."""
    from layer_recycling.stores import snapshot

    real, done = snapshot.atomic_write, [0]

    def write(*args, **kwargs):
        if done[0] == writes:
            os.kill(os.getpid(), signal.SIGKILL)
        done[0] += 1
        return real(*args, **kwargs)

    snapshot.atomic_write = write
    DiskStore(path).compact()


@pytest.mark.parametrize("writes", [0, 1, 2, 3])  # before the keys, the locations, the header, the publish
def test_a_merge_killed_before_it_publishes_leaves_the_previous_generation(tmp_path, writes):
    path, names = tmp_path / "s", keys(900)
    fill(str(path), names[:600], 100)
    DiskStore(path).compact()  # a previous generation to keep
    fill(str(path), names[600:], 100)
    before = read_current(path)
    child = FORK.Process(target=_compact_and_die, args=(str(path), writes))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL, f"the merge ended with {child.exitcode}, not killed at write {writes}"
    assert read_current(path) == before  # CURRENT still names the previous generation
    reader = check_store(path)  # every entry readable: the old generation plus the unmerged segments
    assert len(reader) == 900 and reader.info()["unmerged"] == 3
    assert DiskStore(path).compact() != before[0] and check_store(path).info()["unmerged"] == 0  # a rerun merges


@pytest.mark.slow  # kills land at random times: which outcome each trial has depends on the machine's speed
def test_a_merge_killed_midway_leaves_the_previous_generation(tmp_path):
    path, names, rng = tmp_path / "s", keys(6200), random.Random(0)
    fill(str(path), names[:4000], 100)  # 40 segments
    early = DiskStore(path, readonly=True)  # a reader opened before any merge
    outcomes = {"kept": 0, "new": 0}
    span = 0.05
    for trial in range(14):
        batch = names[4000 + 150 * trial : 4150 + 150 * trial]
        fill(str(path), batch, 150)  # something new to merge each time
        before = read_current(path)
        child = FORK.Process(target=_compact, args=(str(path),))
        started = time.perf_counter()
        child.start()
        if trial < 2:  # the first two run whole: how long a merge takes here sets where the kills land
            child.join()
            span = max(span, time.perf_counter() - started) if trial == 1 else span
        time.sleep(rng.uniform(0.0, span))
        os.kill(child.pid, signal.SIGKILL) if child.exitcode is None else None
        child.join()
        after = read_current(path)
        reader = check_store(path)  # opens whole: a generation whose files all check out
        assert reader.info()["snapshot"] == (after[0] if after else None)
        assert len(reader) == 4150 + 150 * trial
        if after == before:
            outcomes["kept"] += 1
        else:
            outcomes["new"] += 1
            assert reader.info()["unmerged"] == 0
    print(outcomes)
    assert outcomes["kept"] >= 1 and outcomes["new"] >= 2  # some kills landed mid-merge
    assert sorted(early) == sorted(names[:4000]) or len(early) >= 4000
    assert all(torch.equal(a, value(k).half()) for a, k in zip(early.get_many(names[:50]), names[:50]))
    early.refresh()  # and then it moves on to the newest generation
    assert early.info()["snapshot"] == DiskStore(path, readonly=True).info()["snapshot"]


def test_open_snapshot_pins_a_generation_plus_later_segments(tmp_path):
    path = tmp_path / "s"
    fill(str(path), keys(30), 10)
    first = DiskStore(path).compact()
    fill(str(path), keys(40), 10)
    second = DiskStore(path).compact()
    fill(str(path), keys(45), 10)
    store = DiskStore(path, readonly=True)
    store.open_snapshot(first)
    assert store.info()["snapshot"] == first and len(store) == 45 and store.info()["unmerged"] >= 1
    store.open_snapshot(second)
    assert store.info()["snapshot"] == second and store.info()["unmerged"] == 1
    assert DiskStore(path).compact() != second  # a third generation
    with pytest.raises(StoreCorrupted, match="snap-g000009"):
        store.open_snapshot("g000009-00000000")


def test_duplicates_have_one_answer_the_lowest_segment_name(tmp_path):
    k = keys(3)
    writers = {w: DiskStore(tmp_path / "s", writer=w) for w in "bac"}  # all open before any commits: no one
    for fill_value, (w, s) in enumerate(writers.items(), start=2):  # sees another's copy, each writes its own
        s.put_many(k, [torch.full((2, 4), 1.0 if w == "a" else float(fill_value))] * 3)
    for s in writers.values():
        s.close()
    store = DiskStore(tmp_path / "s", readonly=True)
    assert len(store) == 3 and list(store) == sorted(k)
    assert all(float(t[0, 0]) == 1.0 for t in store.get_many(k))
    DiskStore(tmp_path / "s").compact()
    merged = DiskStore(tmp_path / "s", readonly=True)
    assert merged.info()["unmerged"] == 0 and len(merged) == 3
    assert all(float(t[0, 0]) == 1.0 for t in merged.get_many(k))
    s = DiskStore(tmp_path / "s", writer="0")  # a lower name after the merge: it wins there and after the next
    from layer_recycling.stores.binkeys import key_bytes
    from layer_recycling.stores.segments import write_segment

    write_segment(s.path, "seg-0-000000", "0" * 12, "float32", [4], key_bytes(k[:1]), [np.zeros((1, 4), np.float32)],
                  np.array([1]), None)  # bypass "already stored": plant a second copy under a lower name
    assert float(DiskStore(tmp_path / "s", readonly=True)[k[0]][0, 0]) == 0.0
    DiskStore(tmp_path / "s").compact()
    assert float(DiskStore(tmp_path / "s", readonly=True)[k[0]][0, 0]) == 0.0


# ---- damaged and forged pointer and snapshot files ---------------------------------------------------------------


def _merged(path: Path) -> str:
    fill(str(path), keys(20), 5, codec="float32")
    return DiskStore(path).compact()


def test_a_damaged_pointer_is_refused(tmp_path):
    path = tmp_path / "s"
    generation = _merged(path)
    current = (path / "CURRENT").read_bytes()
    doc = json.loads(current)["doc"]
    forgeries = [b"", b"{}", b"not json", current[:-3], checksummed({"generation": "g000099-00000000",
                                                             "blake2b": doc["blake2b"]}),
                 checksummed({"generation": generation, "blake2b": "0" * 64}), checksummed({"generation": "../x"}),
                 checksummed({**doc, "generation": 5})]
    for bad in forgeries:
        (path / "CURRENT").write_bytes(bad)
        with pytest.raises(StoreCorrupted):
            DiskStore(path, readonly=True)
        with pytest.raises(StoreCorrupted):
            DiskStore(path)
    (path / "CURRENT").write_bytes(current)
    assert len(DiskStore(path, readonly=True)) == 20


def _forge_snapshot(path: Path, edit) -> None:
    """Apply ``edit(keys, loc, header)`` to the current generation, recomputing its checksums and CURRENT."""
    gen = read_current(path)[0]
    h = json.loads((path / f"snap-{gen}.json").read_bytes())["doc"]
    k, loc = np.load(path / f"snap-{gen}.keys.npy").copy(), np.load(path / f"snap-{gen}.loc.npy").copy()
    k, loc = edit(k, loc, h)
    rk, rl = npy_bytes(k), npy_bytes(loc)
    (path / f"snap-{gen}.keys.npy").write_bytes(rk)
    (path / f"snap-{gen}.loc.npy").write_bytes(rl)
    h.update(keys_blake2b=blake(rk), loc_blake2b=blake(rl), entries=len(k))
    header = checksummed(h)
    (path / f"snap-{gen}.json").write_bytes(header)
    (path / "CURRENT").write_bytes(checksummed({"generation": gen, "blake2b": blake(header)}))


SNAPSHOT_FORGERIES = {
    "segment beyond the list": lambda k, loc, h: (k, (loc + np.array([[100, 0, 0]])).astype(loc.dtype)),
    "negative segment": lambda k, loc, h: (k, (loc - np.array([[100, 0, 0]])).astype(loc.dtype)),  # wraps if unsigned
    "span past its segment": lambda k, loc, h: (k, (loc + np.array([[0, 0, 10**6]])).astype(loc.dtype)),
    "negative segment, int64": lambda k, loc, h: (k, loc.astype("<i8") - np.array([[100, 0, 0]]))
    if h.update(loc_dtype="<i8") is None else None,
    "locations of another type": lambda k, loc, h: (k, loc.astype("<f8")) if h.update(loc_dtype="<f8") is None
    else None,
    "locations not of their named type": lambda k, loc, h: (k, loc.astype("<i8")),
    "keys out of order": lambda k, loc, h: (k[::-1].copy(), loc),
    "fewer locations": lambda k, loc, h: (k, loc[:-1]),
    "segment list emptied": lambda k, loc, h: (k, loc) if h.update(segments=[]) is None else None,
    "segment header forged": lambda k, loc, h: (k, loc) if h["segments"][0].update(codec="pickle") is None else None,
    "another format": lambda k, loc, h: (k, loc) if h.update(format=1) is None else None,
}


@pytest.mark.parametrize("forgery", SNAPSHOT_FORGERIES, ids=list(SNAPSHOT_FORGERIES))
def test_forged_snapshots_are_refused(tmp_path, forgery):
    path = tmp_path / "s"
    _merged(path)
    _forge_snapshot(path, SNAPSHOT_FORGERIES[forgery])
    with pytest.raises(StoreCorrupted, match="snap-"):
        DiskStore(path, readonly=True)


def test_locations_are_32_bit_and_a_generation_with_64_bit_ones_still_opens(tmp_path):
    path = tmp_path / "s"
    _merged(path)
    gen = read_current(path)[0]
    assert np.load(path / f"snap-{gen}.loc.npy").dtype == np.dtype("<u4")  # 32 bytes per entry with the key
    want = {k: t.clone() for k, t in zip(keys(20), DiskStore(path, readonly=True).get_many(keys(20)))}
    _forge_snapshot(path, lambda k, loc, h: (k, loc.astype("<i8")) if h.pop("loc_dtype") else None)  # as before
    store = DiskStore(path, readonly=True)
    assert store._snap.loc.dtype == np.dtype("<i8") and len(store) == 20
    assert all(torch.equal(want[k], t) for k, t in zip(want, store.get_many(list(want))))
    fill(str(path), keys(5, start=20), 5, codec="float32")
    DiskStore(path).compact()  # merging an int64 generation writes a 32-bit one
    assert DiskStore(path, readonly=True)._snap.loc.dtype == np.dtype("<u4")


def test_a_merge_in_many_small_ranges_equals_one_in_a_single_range(tmp_path, monkeypatch):
    from layer_recycling.stores import snapshot

    def build(path: Path) -> DiskStore:
        store = DiskStore(path, writer="w", compact_after=1000)
        other = DiskStore(path, writer="a")  # opened first, so it sees none of w's copies; a lower name: it wins
        for lo in range(0, 63, 9):
            store.put_many(keys(9, start=lo), [value(k) for k in keys(9, start=lo)])
            store.flush()
            if lo == 27:
                store.compact()  # a previous generation plus later segments
        other.put_many(keys(10, start=20), [torch.zeros(1, 8)] * 10)
        other.flush()
        store.compact()
        return store

    whole = build(tmp_path / "whole")
    monkeypatch.setattr(snapshot, "MERGE_ROWS", 7)  # about 12 ranges of the key space
    ranged = build(tmp_path / "ranged")
    assert np.array_equal(whole._snap.keys, ranged._snap.keys) and np.array_equal(whole._snap.loc, ranged._snap.loc)
    store = DiskStore(tmp_path / "ranged", readonly=True)
    assert len(store) == 63 and store.info()["unmerged"] == 0  # 7 segments of 9 keys, 10 of them twice
    for k, got in zip(keys(63), store.get_many(keys(63))):
        want = torch.zeros(1, 8) if k in keys(10, start=20) else value(k)
        assert torch.equal(got, want)


def merge_ranges(monkeypatch, rows: int) -> list[int]:
    """The sizes of the ranges merges gather from now on (appended as they go), with MERGE_ROWS set to ``rows``."""
    from layer_recycling.stores import snapshot

    monkeypatch.setattr(snapshot, "MERGE_ROWS", rows)
    sizes, real = [], snapshot._ranges

    def spy(*args):
        for keys, loc in real(*args):
            sizes.append(len(keys))
            yield keys, loc

    monkeypatch.setattr(snapshot, "_ranges", spy)
    return sizes


def test_keys_that_share_their_leading_bytes_merge_in_ranges_of_merge_rows(tmp_path, monkeypatch):
    """Sequential hex keys (all in the first 1/2**96 of the key space) are cut where the keys are, not where the
    key space is: cutting it evenly merged them all in one range, a merge's memory unbounded."""
    sizes = merge_ranges(monkeypatch, 20)
    names = [f"{i:040x}" for i in range(200)]
    store = DiskStore(tmp_path / "s", compact_after=1000)
    for chunk in chunks(names, 40):
        store.put_many(chunk, [torch.full((1, 4), float(int(k, 16))) for k in chunk])
        store.flush()
    store.compact()
    # two passes (keys, then locations), each in ranges of at most MERGE_ROWS, nearly full (not of a few keys each)
    assert sum(sizes) == 2 * 200 and max(sizes) <= 20 and len(sizes) <= 2 * 11
    reopened = DiskStore(tmp_path / "s", readonly=True)
    assert [float(t[0, 0]) for t in reopened.get_many(names)] == [float(i) for i in range(200)]


def test_a_merge_of_many_segments_gathers_ranges_near_merge_rows(tmp_path, monkeypatch):
    """With many more indexes than keys sampled from each, ranges stay near MERGE_ROWS: ending a range at the 16th
    smallest sample (each index's first key among them) made ranges of a few keys, and a merge 100 times slower."""
    sizes = merge_ranges(monkeypatch, 64)
    store = DiskStore(tmp_path / "s", compact_after=1000)
    for chunk in chunks(keys(1200), 30):  # 40 segments of random digests
        store.put_many(chunk, [value(k) for k in chunk])
        store.flush()
    store.compact()
    assert sum(sizes) == 2 * 1200 and max(sizes) <= 64
    assert len(sizes) <= 2 * 1200 // 40, f"{len(sizes) // 2} ranges a pass of {max(sizes)} entries at most"
    assert DiskStore(tmp_path / "s", readonly=True).contains_many(keys(1200)).all()
