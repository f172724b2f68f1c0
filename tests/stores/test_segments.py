"""Segments: commit atomicity under SIGKILL, concurrent writers, damaged and forged index files."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from layer_recycling.stores.disk import DiskStore, StoreCorrupted
from layer_recycling.stores.files import blake, checksummed, npy_bytes
from store_helpers import FORK, check_store, fill, filled, flip, keys, opens_and_reads, store_files, value


def _committed_files(store: DiskStore) -> set[str]:
    from layer_recycling.stores.segments import files_of

    live = {"store.json", "fingerprint.json", "CURRENT"}
    for _, h in store._headers.values():
        live.update(files_of(h))
    if store._snap is not None:
        live.update(f"snap-{store._snap.generation}.{x}" for x in ("json", "keys.npy", "loc.npy"))
        for h in store._snap.header["segments"]:
            live.update(files_of(h)[1:])
    return live


def _kill_fillers(path: Path, names: list[str], kills: int, seed: int) -> tuple[int, int]:
    """SIGKILL a filler ``kills`` times at random moments, checking the store after each; (entries, leftovers)."""
    rng, killed, seen, leftovers = random.Random(seed), 0, 0, 0
    while killed < kills:
        child = FORK.Process(target=fill, args=(str(path), names, 4))
        child.start()
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        killed += child.exitcode == -signal.SIGKILL
        if (path / "store.json").exists():
            store = check_store(path)  # every visible entry complete and right
            assert len(store) >= seen  # committed entries survive every later kill
            seen = len(store)
            leftovers += bool(set(store_files(path)) - _committed_files(store))  # killed mid-commit
        if seen == len(names):  # a fast disk finished the fill between kills: start over
            shutil.rmtree(path)
            seen = 0
    return seen, leftovers


def _fill_and_die(path: str, names: list[str], commits: int) -> None:
    """Fill, and die (SIGKILL) when segment ``commits + 1`` has written its data and index but not its header."""
    from layer_recycling.stores import segments

    real, done = segments.atomic_write, [0]

    def write(target, *args, **kwargs):
        if str(target).endswith(".json") and Path(target).name.startswith("seg-"):
            if done[0] == commits:
                os.kill(os.getpid(), signal.SIGKILL)
            done[0] += 1
        return real(target, *args, **kwargs)

    segments.atomic_write = write
    fill(path, names, 4)


def _resume_equals_one_fill(tmp_path: Path, path: Path, names: list[str]) -> None:
    fill(str(path), names, 500)
    fill(str(tmp_path / "ref"), names, 500)
    resumed, reference = check_store(path), DiskStore(tmp_path / "ref")
    assert list(resumed) == list(reference) == sorted(names)
    assert all(torch.equal(a, b) for a, b in zip(resumed.get_many(names), reference.get_many(names)))
    store = DiskStore(path)
    assert store.cleanup(grace=0) >= 1  # a writable open (past the grace period) removes the leftovers
    assert not set(store_files(path)) - _committed_files(store)


@pytest.mark.parametrize("commits", [0, 2])
def test_a_kill_between_a_segments_files_and_its_header_then_resume(tmp_path, commits):
    path, names = tmp_path / "s", keys(600)
    child = FORK.Process(target=_fill_and_die, args=(str(path), names, commits))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL, f"the fill ended with {child.exitcode}, not killed at commit {commits}"
    store = check_store(path)  # every visible entry complete and right; the headerless segment is not visible
    assert len(store) < len(names) and set(store_files(path)) - _committed_files(store)  # its files are left over
    _resume_equals_one_fill(tmp_path, path, names)


@pytest.mark.slow  # kills land at random times: whether one lands mid-commit depends on the machine's speed
def test_sigkill_at_random_points_then_resume(tmp_path):
    path, names = tmp_path / "s", keys(3000)
    _, leftovers = _kill_fillers(path, names, kills=24, seed=0)
    assert leftovers >= 1  # some kills landed between a data file and its index header
    _resume_equals_one_fill(tmp_path, path, names)


@pytest.mark.slow
def test_many_more_sigkills(tmp_path):
    _, leftovers = _kill_fillers(tmp_path / "s", keys(3000), kills=100, seed=1)
    assert leftovers >= 5


def _fill_together(barrier, path: str, names: list[str], per_put: int, seed: int) -> None:
    barrier.wait()  # every filler opens and writes at the same moment
    order = list(names)
    random.Random(seed).shuffle(order)
    fill(path, order, per_put, segment_bytes=2000)


@pytest.mark.parametrize("writers", [2, 4])
def test_concurrent_writers_equal_one_writer_key_by_key(tmp_path, writers):
    names = keys(400)
    fill(str(tmp_path / "ref"), names, 50)
    reference = DiskStore(tmp_path / "ref", readonly=True)
    want = [t.numpy().tobytes() for t in reference.get_many(names)]
    path, barrier = str(tmp_path / "s"), FORK.Barrier(writers)
    fillers = [FORK.Process(target=_fill_together, args=(barrier, path, names, 5 + w, w)) for w in range(writers)]
    for f in fillers:
        f.start()
    for f in fillers:
        f.join(120)
    assert [f.exitcode for f in fillers] == [0] * writers
    store = check_store(Path(path))
    assert list(store) == sorted(names)
    writers_seen = {h["name"].rsplit("-", 1)[0] for _, h in store._headers.values()}
    assert len(writers_seen) == writers  # every writer committed its own segments, no lock in between
    copies = sum(h["entries"] for _, h in store._headers.values())
    print(f"{writers} writers: {copies} copies of {len(names)} keys")
    # Before the merge: one answer per key, from the lowest segment name holding it.
    found, segs, _ = store._locate(names)
    assert found.all()
    for k, seg in zip(names, segs):
        holders = [s.name for s in store._view.segments if k in set(_keys_of(s))]
        assert seg.name == min(holders)
    before = [t.numpy().tobytes() for t in store.get_many(names)]
    DiskStore(path).compact()
    after = DiskStore(path, readonly=True)
    assert after.info()["unmerged"] == 0 and len(after) == len(names)
    assert [t.numpy().tobytes() for t in after.get_many(names)] == before == want


def _keys_of(seg) -> list[str]:
    from layer_recycling.stores.binkeys import key_strs

    return key_strs(np.asarray(seg.index()[0]))


@pytest.mark.parametrize("merge", [False, True])
def test_a_named_writers_later_session_keeps_the_earlier_ones_segments(tmp_path, merge):
    """``writer="rank-0"`` in a rerun once named its first segment as the first run had, replacing it: the first
    run's entries were lost (a killed torchrun job resumed with 8 of 40 entries gone). A later session of a writer
    numbers its segments after the last one it finds, merged or not."""
    first, second = keys(10), keys(10, start=10)
    fill(str(tmp_path / "s"), first, 10, "float32", writer="rank-0", segment_bytes=10**9)
    if merge:
        DiskStore(tmp_path / "s").compact()
    fill(str(tmp_path / "s"), second, 10, "float32", writer="rank-0", segment_bytes=10**9)
    store = DiskStore(tmp_path / "s")
    assert sorted(store) == sorted(first + second) and store.contains_many(first).all()
    assert all(torch.equal(store[k], value(k)) for k in first + second)


@pytest.mark.parametrize("collide", [False, True])  # True: every key one hash, every filter passes every key
def test_keys_that_share_their_leading_bytes_answer_from_the_right_segment(tmp_path, monkeypatch, collide):
    """Unmerged segments are found through filters of a hash of the keys: keys that share their leading bytes,
    copies of one key in several segments, a segment whose name sorts first arriving later, and misses with a
    stored key's leading bytes (or, colliding, its hash) all answer as a fresh reader (and the merged snapshot)
    does."""
    from layer_recycling.stores import view

    if collide:
        monkeypatch.setattr(view, "key_hashes", lambda keys: np.full(len(keys), 12345, np.uint64))
    lead = "ab" * 8
    a, b, c, miss = (lead + tail * 12 for tail in ("11", "22", "01", "12"))
    path = tmp_path / "s"
    # None of the three sees another's commit: each writes its own copies.
    first, second, late = (DiskStore(path, writer=w) for w in ("w-a", "w-b", "w-0"))
    first.put_many([a, b], [torch.full((1, 4), 1.0), torch.full((2, 4), 2.0)])
    second.put_many([a, c], [torch.full((3, 4), 9.0), torch.full((1, 4), 3.0)])
    first.flush()
    second.flush()
    reader = DiskStore(path, readonly=True)
    late.put_many([c], [torch.full((4, 4), 5.0)])
    late.flush()  # its name sorts before both: its copy of c wins, also in the reader opened before it
    want = {a: 1.0, b: 2.0, c: 5.0}
    for store in (reader, second, DiskStore(path, readonly=True)):
        store.refresh()
        assert store.info()["unmerged"] == 3 and len(store._view.filters) == 3
        assert store.contains_many([a, b, c, miss]).tolist() == [True, True, True, False]
        assert [float(t[0, 0]) for t in store.get_many([a, b, c])] == [want[a], want[b], want[c]]
        with pytest.raises(KeyError):
            store.get_many([miss])
    DiskStore(path).compact()
    merged = DiskStore(path, readonly=True)
    assert merged.info()["unmerged"] == 0 and merged._view.filters == {}
    assert [float(t[0, 0]) for t in merged.get_many([a, b, c])] == [1.0, 2.0, 5.0] and miss not in merged


# ---- damaged and forged index files ------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["float16", "int8"])
def test_every_truncation_and_bit_flip_is_refused(tmp_path, codec):
    path = tmp_path / "s"
    filled(path, codec, n=10, per_put=5).compact()
    filled(path, codec, n=14, per_put=5)  # and one unmerged segment
    DiskStore(path).bind_fingerprint(__import__("layer_recycling").Fingerprint({"weights": "aa"}))
    store = DiskStore(path, readonly=True)
    newest = store._view.unmerged[-1].header
    from layer_recycling.stores.segments import files_of

    files = [*files_of(newest), "CURRENT", "store.json", "fingerprint.json",
             *[n for n in store_files(path) if n.startswith("snap-")]]
    rng, cases, missed = random.Random(codec), 0, []
    for name in files:
        original = (path / name).read_bytes()
        cuts = {0, 1, 8, len(original) // 2, len(original) - 1, *rng.sample(range(len(original)), 4)}
        damaged = [original[:c] for c in cuts] + [flip(original, b) for b in rng.sample(range(len(original) * 8), 25)]
        for data in damaged:
            (path / name).write_bytes(data)
            cases += 1
            try:
                opens_and_reads(path)
                if name == "fingerprint.json":
                    DiskStore(path, readonly=True).fingerprint_parts
                missed.append((name, len(data)))
            except StoreCorrupted as e:
                assert name in str(e)  # the error names the damaged file
        (path / name).write_bytes(original)
    opens_and_reads(path)
    assert cases >= 200 and not missed


def _forge_segment(path: Path, edit) -> None:
    """Apply ``edit(keys, spans)`` to the newest segment's index and recompute every checksum: only checks catch it."""
    h = json.loads(max(path.glob("seg-*.json"), key=lambda p: p.stat().st_mtime_ns).read_bytes())["doc"]
    stem = path / f"{h['name']}.{h['token']}"
    k = np.load(f"{stem}.keys.npy").copy()
    s = np.load(f"{stem}.spans.npy").copy()
    k, s = edit(k, s)
    raw_k, raw_s = npy_bytes(k), npy_bytes(s)
    Path(f"{stem}.keys.npy").write_bytes(raw_k)
    Path(f"{stem}.spans.npy").write_bytes(raw_s)
    h.update(keys_blake2b=blake(raw_k), spans_blake2b=blake(raw_s))
    (path / f"{h['name']}.json").write_bytes(checksummed(h))


FORGERIES = {
    "keys out of order": lambda k, s: (k[::-1].copy(), s),
    "duplicate key": lambda k, s: (np.concatenate([k[:1], k[:-1]]), s),
    "span past the end": lambda k, s: (k, s + np.array([[0, 10**6]])),
    "negative offset": lambda k, s: (k, s - np.array([[100, 0]])),
    "fewer spans": lambda k, s: (k, s[:-1]),
    "float spans": lambda k, s: (k, s.astype(np.float64)),
    "keys as ints": lambda k, s: (np.arange(len(k)), s),
}


@pytest.mark.parametrize("forgery", FORGERIES, ids=list(FORGERIES))
def test_forged_segment_indexes_are_refused(tmp_path, forgery):
    path = tmp_path / "s"
    filled(path, n=8, per_put=8)
    _forge_segment(path, FORGERIES[forgery])
    with pytest.raises(StoreCorrupted, match="seg-"):
        opens_and_reads(path)


HEADER_FORGERIES = {
    "path outside the store": lambda h: h.update(token="../../etc"),
    "another codec": lambda h: h.update(codec="int8"),
    "unknown codec": lambda h: h.update(codec="pickle"),
    "sizes that do not add up": lambda h: h.update(rows=h["rows"] + 1),
    "negative entries": lambda h: h.update(entries=-1),
    "future format": lambda h: h.update(format=99),
    "another name": lambda h: h.update(name="seg-x-000000"),
    "count not an int": lambda h: h.update(entries="4"),
}


@pytest.mark.parametrize("forgery", HEADER_FORGERIES, ids=list(HEADER_FORGERIES))
def test_forged_segment_headers_are_refused(tmp_path, forgery):
    path = tmp_path / "s"
    filled(path, n=8, per_put=8)
    target = next(path.glob("seg-*.json"))
    h = json.loads(target.read_bytes())["doc"]
    HEADER_FORGERIES[forgery](h)
    target.write_bytes(checksummed(h))
    with pytest.raises(StoreCorrupted):
        opens_and_reads(path)
    with pytest.raises(StoreCorrupted):
        DiskStore(path)  # a writable open refuses too, and deletes nothing
    assert len(list(path.glob("seg-*.data"))) == 1
