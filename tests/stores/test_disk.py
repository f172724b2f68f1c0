"""DiskStore: round trips per codec, verbs, fingerprint, read-only use, full disks, workers, planted pickles."""

from __future__ import annotations

import errno
import itertools
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import layer_recycling as lr
from conftest import text_examples
from helpers import max_diff, padded_batch
from layer_recycling.fingerprint import Fingerprint
from layer_recycling.stores.codecs import codec_name, dequantize
from layer_recycling.stores.disk import DiskFull, DiskStore, StoreCorrupted
from store_helpers import (CODECS, FORK, assert_close, chunks, filled, flip, keys, number, opens_and_reads, store_files,
                           value)

# ---- round trips ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("feature", [(8,), (3, 4, 2)], ids=["tokens", "feature-maps"])
def test_round_trip_of_ragged_entries(tmp_path, codec, feature):
    store = filled(tmp_path / "s", codec, n=14, feature=feature)
    names = keys(14)
    assert len(store) == 14 and list(store) == sorted(names) and store.codec == codec_name(codec)
    assert store[names[7]].shape == (0, *feature)  # ragged: no padding, empty entries too
    worst = 0.0
    for reopened in (store, DiskStore(tmp_path / "s"), DiskStore(tmp_path / "s", readonly=True)):
        got = reopened.get_many(names[::-1])  # order of the request, not of the store
        worst = max(worst, *(assert_close(codec, g, value(k, feature)) for g, k in zip(got, names[::-1])))
    print(f"{codec} {feature}: max abs error {worst:.3g}")
    default = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(codec, torch.float32)
    assert store[names[1]].dtype == default
    as64 = store.get_many([names[3]], device="cpu", dtype=torch.float64)[0]
    assert as64.dtype == torch.float64 and as64.device.type == "cpu"
    assert_close(codec, as64, value(names[3], feature).double())


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("feature", [(8,), (3, 4, 2)], ids=["tokens", "feature-maps"])
def test_get_stored_gives_the_bytes_that_get_many_decodes(tmp_path, codec, feature):
    store = filled(tmp_path / "s", codec, n=8, feature=feature)
    fresh = keys(2, start=8)
    store.put_many(fresh, [value(k, feature) for k in fresh])  # buffered, not committed: read from memory
    names = keys(8)[::-1] + fresh
    kept = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8}
    for reader in (store, DiskStore(tmp_path / "s", readonly=True)):
        asked = names if reader is store else names[:8]
        got = reader.get_stored(asked)
        decoded = reader.get_many(asked, dtype=torch.float32)
        for (values, scales), d, k in zip(got, decoded, asked, strict=True):
            assert values.dtype == kept[codec] and values.shape == (number(k) % 7, *feature)
            assert (scales is not None) == (codec == "int8")
            if scales is not None:  # a side record per row: scale, 4 kept values, their columns
                assert scales.dtype == torch.float32 and scales.shape == (values.shape[0], 9)
            assert torch.equal(dequantize(values, scales, torch.float32), d)  # the same conversion, anywhere
    assert store.get_stored([]) == []
    with pytest.raises(KeyError, match="is not in the store"):
        store.get_stored([names[0], lr.digest("absent")])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("codec", CODECS)
def test_get_many_decodes_on_the_device(tmp_path, codec):
    store = filled(tmp_path / "s", codec)
    got = store.get_many(keys(12), device="cuda", dtype=torch.float32)
    assert all(g.device.type == "cuda" and g.dtype == torch.float32 for g in got)
    for g, k in zip(got, keys(12)):
        assert_close(codec, g.cpu(), value(k))


def test_entries_a_process_left_buffered_are_committed_when_it_exits(tmp_path):
    """Misses stored while serving are readable at once but were durable only at the next commit, which a
    process that served and exited never made: they are committed at exit now."""
    code = (
        "import sys, torch; from layer_recycling.stores.disk import DiskStore\n"
        "s = DiskStore(sys.argv[1])\n"
        "s.put_many(sys.argv[2:], [torch.ones(2, 3), torch.zeros(1, 3)])\n"
        "assert s.info()['buffered'] == 2\n"
    )
    a, b = keys(2)
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "s"), a, b], check=True, timeout=120)
    store = DiskStore(tmp_path / "s", readonly=True)
    assert sorted(store) == sorted([a, b]) and torch.equal(store[a], torch.ones(2, 3))


def test_a_store_let_go_is_collected_keeping_what_it_committed(tmp_path):
    """The exit commit was a module-level atexit hook over every store of the process; it is each store's own
    now (tests/test_imports.py checks that importing the package registers no exit hook), and holds the store
    weakly: a store let go is collected, keeping what it committed."""
    import gc
    import weakref

    a, b = keys(2)
    store = DiskStore(tmp_path / "s")
    store.put_many([a], [torch.ones(2, 3)])
    store.flush()
    store.put_many([b], [torch.zeros(1, 3)])
    ref = weakref.ref(store)
    del store
    gc.collect()
    assert ref() is None  # the exit hook did not keep it alive
    assert sorted(DiskStore(tmp_path / "s", readonly=True)) == [a]  # committed kept; buffered when let go: not


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_a_store_let_go_keeps_no_file_descriptor(tmp_path):
    """Each store opened and read kept its segments' data files open after it was gone: a loop of checks ran out
    of descriptors (EMFILE) in the fault-injection tests."""
    filled(tmp_path / "s", n=12, per_put=4)  # three segments
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = fds()
    for _ in range(30):
        DiskStore(tmp_path / "s").get_many(keys(12))
    assert fds() <= before + 2


def test_a_subprocess_sees_the_same_content(tmp_path):
    store = filled(tmp_path / "s", "int8")
    here = {k: store[k].numpy().tobytes().hex() for k in store}
    code = (
        "import json, sys; from layer_recycling.stores.disk import DiskStore\n"
        "s = DiskStore(sys.argv[1], readonly=True)\n"
        "print(json.dumps({k: s[k].numpy().tobytes().hex() for k in s}))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == here


def test_store_verbs_info_and_pickle(tmp_path):
    a, b, c, z = keys(4, start=100)
    store = DiskStore(tmp_path / "s", codec=torch.float16)
    assert isinstance(store, lr.Store) and store.codec == "float16" and len(store) == 0
    store[a] = torch.ones(3, 2)
    store.put_many([b, a, b], [torch.zeros(5, 2), torch.full((1, 2), 7.0), torch.ones(9, 2)])
    assert a in store and z not in store and 3 not in store and "k1" not in store and sorted(store) == sorted([a, b])
    assert torch.equal(store[a], torch.ones(3, 2, dtype=torch.float16))  # a stored key is kept, not overwritten
    assert [t.shape[0] for t in store.get_many([b, a])] == [5, 3] and store.get_many([]) == []
    with pytest.raises(KeyError, match=f"'{z}' is not in the store"):
        store[z]
    assert store.info()["buffered"] == 2 and store.info()["segments"] == 0  # readable here, not committed yet
    store.flush()
    info = store.info()
    assert (info["entries"], info["rows"], info["segments"], info["unmerged"], info["codec"]) == (2, 8, 1, 1, "float16")
    assert info["bytes"] > 8 * 2 * 2 and info["created_by"] == f"layer_recycling {lr.__version__}"
    assert info["feature_shape"] == [2] and info["snapshot"] is None
    clone = pickle.loads(pickle.dumps(store))
    assert sorted(clone) == sorted([a, b]) and torch.equal(clone[b], store[b])
    other = DiskStore(tmp_path / "s")
    store.put_many([c], [torch.ones(2, 2)])
    store.flush()
    assert c in other and len(other) == 3  # a miss re-lists the segments: other writers' entries appear
    generation = store.compact()
    assert store.info()["snapshot"] == generation and store.info()["unmerged"] == 0 and len(store) == 3
    with store:
        store.flush()
    assert torch.equal(store[c], torch.ones(2, 2, dtype=torch.float16))  # reopens lazily after close
    with pytest.raises(TypeError, match="dtype"):  # the pre-release alias is gone: codec= only
        DiskStore(tmp_path / "s", dtype="float16")


def test_a_key_committed_before_is_dropped_at_the_next_commit_and_the_first_copy_stays(tmp_path):
    a, b, c = keys(3, start=200)
    store = DiskStore(tmp_path / "s", compact_after=100)
    store.put_many([a], [torch.ones(2, 4)])
    store.flush()
    other = DiskStore(tmp_path / "s")  # another writer commits b while this one buffers it
    other.put_many([b], [torch.ones(3, 4)])
    other.flush()
    store.refresh()
    store.put_many([a, b, c], [torch.zeros(5, 4), torch.zeros(6, 4), torch.full((1, 4), 2.0)])
    assert [t.shape[0] for t in store.get_many([a, b, c])] == [2, 3, 1]  # served from the committed copies
    store.flush()
    store.put_many([a], [torch.zeros(5, 4)])
    store.flush()  # nothing new: no segment at all
    reopened = DiskStore(tmp_path / "s", readonly=True)
    assert reopened.info()["segments"] == 3 and reopened.info()["rows"] == 2 + 3 + 1
    assert torch.equal(reopened[a], torch.ones(2, 4)) and torch.equal(reopened[c], torch.full((1, 4), 2.0))


def test_full_buffers_commit_in_a_thread_and_every_entry_stays_readable(tmp_path, monkeypatch):
    import layer_recycling.stores.disk as disk

    started = []
    real = disk.write_segment

    def slow(*job):  # a slow disk: the next batches arrive while this segment is being written (long enough
        started.append(job[1])  # for a loaded machine's puts to outrun it, and to be still in flight at the end)
        time.sleep(0.2)
        return real(*job)

    monkeypatch.setattr(disk, "write_segment", slow)
    store = DiskStore(tmp_path / "s", segment_bytes=600, compact_after=1000)
    names, in_flight = keys(60), 0
    for chunk in chunks(names, 4):
        store.put_many(chunk, [value(k) for k in chunk])
        in_flight = max(in_flight, len(store._committing))
        seen = names[: names.index(chunk[-1]) + 1]
        assert all(k in store for k in seen)  # buffered, being committed, or committed: always readable
        for got, k in zip(store.get_many(seen), seen):
            assert torch.equal(got, value(k))
    assert store._committing and len(started) > 3  # commits ran behind the puts
    assert in_flight == disk.IN_FLIGHT  # a slow disk: two segments were written at once, never more
    store.flush()  # waits for those in flight, commits the rest
    assert not store._committing and store.info()["buffered"] == 0
    reopened = DiskStore(tmp_path / "s", readonly=True)
    assert sorted(reopened) == sorted(names) and reopened.info()["segments"] == len(started)
    assert all(torch.equal(got, value(k)) for got, k in zip(reopened.get_many(names), names))


def test_reads_in_another_thread_during_a_fill_see_every_entry_right(tmp_path):
    """A serving thread reads entries that a filling thread's buffers hold, commit and retire (reusing their
    arrays for the next buffers) meanwhile: every read is whole and right."""
    import threading

    store, names = DiskStore(tmp_path / "s", segment_bytes=2000, compact_after=1000), keys(300, start=500)
    put, errors, reads = [], [], [0]

    def serve():
        rng = random.Random(0)
        while len(put) < len(names) and not errors:
            if put:
                pick = [put[rng.randrange(len(put))] for _ in range(8)]
                try:
                    for got, k in zip(store.get_many(pick), pick):
                        assert torch.equal(got, value(k)), k
                except BaseException as e:  # handed to the test's thread
                    errors.append(e)
                reads[0] += 1

    reader = threading.Thread(target=serve)
    reader.start()
    for chunk in chunks(names, 4):
        store.put_many(chunk, [value(k) for k in chunk])
        put.extend(chunk)
        done, deadline = reads[0], time.monotonic() + 10
        while reads[0] == done and not errors and time.monotonic() < deadline:  # a read between every two puts
            time.sleep(0.0005)
    reader.join(60)
    store.flush()
    assert not errors, errors[0]
    assert reads[0] >= len(names) // 4 - 1 and store.info()["segments"] > 10


def test_a_put_in_another_thread_waits_while_a_read_is_between_lookup_and_copy(tmp_path, monkeypatch):
    """The race behind the test above, made certain: a reader stops after finding buffered entries; a writer that
    would commit and retire that buffer meanwhile has to wait for the read to finish."""
    import threading

    store, names = DiskStore(tmp_path / "s", segment_bytes=600, compact_after=1000), keys(40, start=700)
    store.put_many(names[:4], [value(k) for k in names[:4]])  # buffered, not committed
    located, resume, got = threading.Event(), threading.Event(), {}
    real_read = DiskStore._read

    def paused_read(self, *args):
        if threading.current_thread().name == "reader":
            located.set()
            resume.wait(5)  # the writer gets this long to retire the buffer, unless the lock stops it
        return real_read(self, *args)

    def read():
        try:
            got["values"] = store.get_many(names[:4])
        except BaseException as e:  # handed to the test's thread
            got["error"] = e

    def write():
        for chunk in chunks(names[4:], 4):
            store.put_many(chunk, [value(k) for k in chunk])
        store.flush()

    monkeypatch.setattr(DiskStore, "_read", paused_read)
    reader = threading.Thread(target=read, name="reader")
    reader.start()
    assert located.wait(10)
    writer = threading.Thread(target=write)
    writer.start()
    writer.join(1.0)
    assert writer.is_alive()  # waiting for the store's lock, which the read holds
    resume.set()
    reader.join(10)
    writer.join(30)
    assert "error" not in got, got.get("error")
    assert all(torch.equal(g, value(k)) for g, k in zip(got["values"], names[:4]))
    assert sorted(DiskStore(tmp_path / "s", readonly=True)) == sorted(names)


def _read_in_child(store: DiskStore, key: str) -> None:
    assert torch.equal(store.get_many([key])[0], value(key))
    store.put_many(keys(1, start=900), [value(keys(1, start=900)[0])])  # and a child can write its own segment
    store.flush()


def test_a_worker_forked_while_a_thread_holds_the_store_lock_still_reads(tmp_path):
    import threading

    store = filled(tmp_path / "s", n=4)
    held, release = threading.Event(), threading.Event()

    def hold():
        with store._lock:  # e.g. a serving thread in the middle of a read when a DataLoader forks
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    child = FORK.Process(target=_read_in_child, args=(store, keys(4)[2]))
    child.start()
    child.join(60)
    release.set()
    holder.join()
    assert child.exitcode == 0  # None: it waited forever on the lock copied at the fork
    assert keys(1, start=900)[0] in DiskStore(tmp_path / "s", readonly=True)


def test_a_merge_while_a_put_waits_for_a_commit_leaves_nothing_behind(tmp_path, monkeypatch):
    """A put that waits for the oldest commit in flight may see it trigger the automatic merge, which flushes the
    put's own buffer: the put then has nothing left to commit, and must not fail."""
    import layer_recycling.stores.disk as disk

    real = disk.write_segment

    def slow(*job):  # commits pile up to IN_FLIGHT
        time.sleep(0.02)
        return real(*job)

    monkeypatch.setattr(disk, "write_segment", slow)
    store, names = DiskStore(tmp_path / "s", segment_bytes=1, compact_after=2), keys(60, start=1200)
    for chunk in chunks(names, 4):
        store.put_many(chunk, [value(k) for k in chunk])
    store.close()
    reopened = DiskStore(tmp_path / "s", readonly=True)
    assert sorted(reopened) == sorted(names) and reopened.info()["snapshot"] is not None
    assert all(torch.equal(got, value(k)) for got, k in zip(reopened.get_many(names), names))


def test_a_failed_background_commit_raises_at_the_next_call_and_loses_nothing(tmp_path, monkeypatch):
    import layer_recycling.stores.disk as disk

    real, calls = disk.write_segment, itertools.count()

    def full_once(*job):
        if next(calls) == 1:
            raise DiskFull(errno.ENOSPC, "no space left (test)")
        return real(*job)

    monkeypatch.setattr(disk, "write_segment", full_once)
    store = DiskStore(tmp_path / "s", segment_bytes=600, compact_after=1000)
    names, raised = keys(40), 0
    for chunk in chunks(names, 4):
        try:
            store.put_many(chunk, [value(k) for k in chunk])
        except DiskFull:
            raised += 1  # this call's entries were buffered before the earlier commit's error surfaced
        assert all(k in store for k in names[: names.index(chunk[-1]) + 1])
    try:
        store.flush()  # the error surfaces here if no put came after the failed commit
    except DiskFull:
        raised += 1
    store.flush()  # the failed commit's entries commit now
    assert raised == 1
    reopened = DiskStore(tmp_path / "s", readonly=True)
    assert sorted(reopened) == sorted(names)
    assert all(torch.equal(got, value(k)) for got, k in zip(reopened.get_many(names), names))


@pytest.mark.parametrize("per_put", [1, 3])
def test_a_value_changed_in_place_after_put_many_keeps_what_was_put(tmp_path, per_put):
    names = keys(6, start=300)
    store = DiskStore(tmp_path / "s", codec="float32")
    values = [torch.full((2, 4), float(i)) for i in range(6)]
    for lo in range(0, 6, per_put):
        store.put_many(names[lo : lo + per_put], values[lo : lo + per_put])
    for v in values:
        v.fill_(-1.0)  # a caller reusing its output buffer
    assert [float(t[0, 0]) for t in store.get_many(names)] == [0, 1, 2, 3, 4, 5]  # buffered
    store.flush()
    assert [float(t[0, 0]) for t in DiskStore(tmp_path / "s", readonly=True).get_many(names)] == [0, 1, 2, 3, 4, 5]


def test_bad_inputs_are_refused_with_the_fix(tmp_path):
    a, b, c, d, e = keys(5)
    store = DiskStore(tmp_path / "s", codec="float16")
    store.put_many([a], [torch.ones(2, 4)])
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*\(n, 4\).*one store per state shape"):
        store.put_many([b], [torch.ones(2, 3)])
    with pytest.raises(ValueError, match=r"shape \(1, 4, 1\)"):
        store.put_many([c], [torch.ones(1, 4, 1)])
    with pytest.raises(ValueError, match="beyond float16's range.*codec='bfloat16'"):
        store.put_many([d], [torch.tensor([[1e5, 0, 0, 0]])])
    with pytest.raises(TypeError, match="str content digests.*lr.digest"):
        store.put_many([3], [torch.ones(1, 4)])
    with pytest.raises(ValueError, match="40-char hex.*lr.digest"):
        store.put_many(["k00001"], [torch.ones(1, 4)])
    with pytest.raises(TypeError, match="floating tensors of >= 1 dim.*torch.int64"):
        store.put_many([e], [torch.ones(1, 4, dtype=torch.long)])
    with pytest.raises(TypeError, match="got a torch.float32 tensor of shape \\(\\)"):
        store.put_many([e], [torch.tensor(1.0)])
    assert sorted(store) == [a]  # nothing of a refused batch was stored
    store.flush()
    with pytest.raises(ValueError, match="holds a 'float16' store.*codec=None"):
        DiskStore(tmp_path / "s", codec="int8")
    with pytest.raises(ValueError, match="expected one of"):
        DiskStore(tmp_path / "t", codec="int4")
    with pytest.raises(ValueError, match="inf or nan"):
        DiskStore(tmp_path / "u", codec="int8").put_many([a], [torch.tensor([[float("nan")]])])
    with pytest.raises(ValueError, match="writer="):
        DiskStore(tmp_path / "u", writer="../x")
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a DiskStore"):
        DiskStore(tmp_path / "v")
    with pytest.raises(FileNotFoundError, match="readonly=False"):
        DiskStore(tmp_path / "w", readonly=True)


def test_bfloat16_keeps_values_float16_cannot(tmp_path):
    x = torch.tensor([[1e5, -3e6, 0.5]])
    store = DiskStore(tmp_path / "s", codec=torch.bfloat16)
    store.put_many(keys(1), [x])
    assert_close("bfloat16", store[keys(1)[0]], x)


def test_a_segment_commits_when_the_buffer_is_full_and_on_close(tmp_path):
    store = DiskStore(tmp_path / "s", segment_bytes=8 * 4 * 20)  # about 20 rows of 8 float32
    names = keys(30)
    for k in names:
        store.put_many([k], [value(k)])
    store._finish_commits(wait=True)  # the full buffers' commits, still running in their threads; not a flush
    committed = store.info()["segments"]
    assert 3 <= committed < 30 and store.info()["buffered"] > 0 and len(DiskStore(tmp_path / "s", readonly=True)) < 30
    store.close()
    assert len(DiskStore(tmp_path / "s", readonly=True)) == 30


def test_segments_merge_automatically_past_the_threshold(tmp_path):
    store = filled(tmp_path / "s", n=20, per_put=2, compact_after=4)
    info = store.info()
    assert info["snapshot"] is not None and info["unmerged"] <= 4 and info["segments"] == 10
    assert sorted(DiskStore(tmp_path / "s", readonly=True)) == sorted(keys(20))


# ---- fingerprint and read-only ---------------------------------------------------------------------------------


def test_fingerprint_is_recorded_and_a_mismatch_refused(tmp_path):
    fp = Fingerprint({"format": "1", "weights": "aa" * 20, "dtype": "float16"})
    store = DiskStore(tmp_path / "s", codec="float16")
    store.bind_fingerprint(fp)
    store.put_many(keys(1), [torch.ones(1, 2)])
    store.close()
    reopened = DiskStore(tmp_path / "s")
    assert reopened.fingerprint_parts == fp.parts and reopened.info()["fingerprint"] == fp.parts
    reopened.bind_fingerprint(fp)  # the same bottom: a hit
    DiskStore(tmp_path / "s", readonly=True).bind_fingerprint(fp)
    changed = Fingerprint({**fp.parts, "weights": "bb" * 20})
    with pytest.raises(lr.FingerprintMismatch, match=r"DiskStore\('.*s'.*weights differ"):
        DiskStore(tmp_path / "s").bind_fingerprint(changed)
    with pytest.raises(lr.FingerprintMismatch):
        DiskStore(tmp_path / "s", readonly=True).bind_fingerprint(changed)
    (tmp_path / "s" / "fingerprint.json").write_bytes(b'{"doc": {"weights": "cc"}, "blake2b": "00"}')
    with pytest.raises(StoreCorrupted, match="fingerprint.json"):
        DiskStore(tmp_path / "s").bind_fingerprint(fp)


def test_recycle_fills_a_disk_store_and_a_new_process_reuses_it(tmp_path, bert):
    examples = text_examples(8)
    rec = lr.recycle(bert, at=2, store=DiskStore(tmp_path / "s", codec="float16")).eval()
    assert rec.fill(examples, batch_size=3, progress=False) == 8  # fill flushes at its end
    assert DiskStore(tmp_path / "s", readonly=True).info()["segments"] == 1  # one segment, not one per batch
    again = lr.recycle(bert, at=2, store=pickle.loads(pickle.dumps(DiskStore(tmp_path / "s", readonly=True)))).eval()
    batch = padded_batch(examples)
    with torch.no_grad():
        assert max_diff(bert(**batch), again(**batch), batch["attention_mask"]) <= 1e-2
    assert again.stats.bottom_calls == 0 and again.stats.hits == 8
    assert len(list(again.loader(examples, batch_size=4, progress=False))) == 2 and again.stats.bottom_calls == 0
    with pytest.raises(lr.FingerprintMismatch):
        lr.recycle(bert, at=3, store=DiskStore(tmp_path / "s"))


def test_a_read_only_store_writes_nothing(tmp_path):
    filled(tmp_path / "s")
    shutil.copytree(tmp_path / "s", tmp_path / "copy")
    before = store_files(tmp_path / "copy")
    store = DiskStore(tmp_path / "copy", readonly=True)
    assert torch.equal(store[keys(4)[3]], value(keys(4)[3]))
    with pytest.raises(PermissionError, match="readonly=True"):
        store.put_many(keys(1, start=50), [torch.ones(1, 8)])
    with pytest.raises(PermissionError, match="readonly=True"):
        store.compact()
    store.bind_fingerprint(Fingerprint({"weights": "aa"}))
    store.close()
    assert store_files(tmp_path / "copy") == before


def _check_read_only_directory(path: str) -> None:
    """In an unprivileged process: the directory is really read-only, and the store reads fine from it."""
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)  # nobody: root ignores file modes
    with pytest.raises(PermissionError):
        Path(path, "probe").touch()
    for store in (DiskStore(path, readonly=True), DiskStore(path)):  # without readonly=True: read-only all the same
        assert sorted(store) == sorted(keys(12)) and all(torch.equal(store[k], value(k)) for k in keys(12))
        with pytest.raises(PermissionError, match="readonly=True"):
            store.put_many(keys(1, start=50), [torch.ones(1, 8)])
        store.close()
    with pytest.raises(PermissionError, match=r"cannot create a DiskStore in .*read-only.*readonly=True"):
        DiskStore(Path(path).parent / "new")  # the parent is root's, 0755


def _can_create(path: Path) -> bool:
    try:
        path.touch()
    except PermissionError:
        return False
    path.unlink()
    return True


def test_a_finished_store_opens_from_a_read_only_directory():
    root = Path(tempfile.mkdtemp())  # not under pytest's 0700 tmp root: an unprivileged child must reach it
    try:
        root.chmod(0o755)
        filled(root / "s").compact()
        subprocess.run(["chmod", "-R", "a-w", str(root / "s")], check=True)
        if os.geteuid() != 0 and _can_create(root / "s" / "probe"):
            pytest.skip("chmod a-w does not stop this user from writing")
        child = FORK.Process(target=_check_read_only_directory, args=(str(root / "s"),))
        child.start()
        child.join(60)
        assert child.exitcode == 0
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)
        shutil.rmtree(root)


# ---- full disks, workers, memory ---------------------------------------------------------------------------------


def test_a_full_disk_names_the_file_and_keeps_what_was_committed(tmp_path, monkeypatch):
    store = filled(tmp_path / "s", "int8", n=8)
    real_write, failed = os.write, 0
    for nth in range(1, 8):
        calls = itertools.count(1)

        def write(fd, data, nth=nth, calls=calls):
            if next(calls) == nth:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        before = sorted(DiskStore(tmp_path / "s", readonly=True))
        batch = keys(4, start=8 + 4 * nth)
        store.put_many(batch, [value(k) for k in batch])
        monkeypatch.setattr(os, "write", write)
        try:
            store.flush()
        except DiskFull as e:
            failed += 1
            assert isinstance(e, OSError) and e.errno == errno.ENOSPC
            assert str(tmp_path / "s") in str(e) and "bytes needed" in str(e) and "intact" in str(e)
            assert sorted(DiskStore(tmp_path / "s", readonly=True)) == before
        monkeypatch.setattr(os, "write", real_write)
        assert not [n for n in store_files(tmp_path / "s") if n.endswith(".tmp")]
        store.flush()  # the buffer survived the failed commit: it commits once there is space
        assert sorted(DiskStore(tmp_path / "s", readonly=True)) == sorted(before + batch)
    assert failed >= 4  # every file of a segment commit was hit once
    assert DiskStore(tmp_path / "s").cleanup(grace=0) >= 1  # the orphans of failed commits
    for k in DiskStore(tmp_path / "s"):
        assert_close("int8", store[k], value(k))


def test_dataloader_workers_read_the_same_batches(tmp_path):
    store = filled(tmp_path / "s", "bfloat16", n=24)
    store.compact()
    filled(tmp_path / "s", "bfloat16", n=30)  # six more in an unmerged segment
    names = keys(30)
    items = [(k, {"labels": torch.tensor(i % 3)}, value(k).shape[0]) for i, k in enumerate(names)]
    dataset = lr.CachedDataset.from_items(DiskStore(tmp_path / "s", readonly=True), items, torch.float32)
    plain = list(torch.utils.data.DataLoader(dataset, batch_size=5, collate_fn=dataset.collate))
    for context in ("fork", "spawn"):
        loader = torch.utils.data.DataLoader(dataset, batch_size=5, collate_fn=dataset.collate, num_workers=2,
                                             multiprocessing_context=context)
        workers = list(loader)
        assert len(workers) == len(plain) == 6
        for a, b in zip(plain, workers):
            assert a.keys() == b.keys()
            assert all(a[n].numpy().tobytes() == b[n].numpy().tobytes() for n in a), context


def test_reading_a_few_entries_maps_only_their_pages(tmp_path):
    path = tmp_path / "big"
    store = DiskStore(path, segment_bytes=10 << 20)
    names = keys(200, start=1000)
    for chunk in (names[i : i + 10] for i in range(0, 200, 10)):  # 200 entries of 1 MB in 20 segments
        store.put_many(chunk, [torch.full((256, 1024), float(names.index(k))) for k in chunk])
    store.close()
    assert store.info()["bytes"] > 200e6
    picks = [3, 51, 107, 150, 199]
    code = (
        "import sys, torch\nfrom layer_recycling.stores.disk import DiskStore\n"
        "def rss(): return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]) * 1024\n"
        "before = rss(); s = DiskStore(sys.argv[1], readonly=True)\n"
        f"got = s.get_many({[names[i] for i in picks]!r})\n"
        f"assert [float(g[0, 0]) for g in got] == {[float(i) for i in picks]!r}\n"
        "del got; print(rss() - before)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    growth = int(out.stdout)
    print(f"RSS growth after opening a 200 MB store and reading 5 entries: {growth / 1e6:.1f} MB")
    assert growth < 50e6


def test_a_reader_keeps_at_most_max_open_files_data_files_open(tmp_path, monkeypatch):
    import layer_recycling.stores.disk as disk

    filled(tmp_path / "s", n=24, per_put=3, compact_after=1000)  # 8 segments
    monkeypatch.setattr(disk, "MAX_OPEN_FILES", 3)
    store, names = DiskStore(tmp_path / "s", readonly=True), keys(24)

    def data_files_open() -> int:
        return sum(os.readlink(f"/proc/self/fd/{fd}").endswith(".data") for fd in os.listdir("/proc/self/fd")
                   if os.path.exists(f"/proc/self/fd/{fd}"))

    base = data_files_open()
    for rnd in range(3):
        for chunk in chunks(names[rnd:] + names[:rnd], 5):  # every segment, in changing order
            assert all(torch.equal(got, value(k)) for got, k in zip(store.get_many(chunk), chunk))
            assert data_files_open() - base <= 3
    assert data_files_open() - base == 3  # kept open between reads, up to the limit
    store.close()
    assert data_files_open() == base


# ---- planted pickles ------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates the sentinel file: the proof that a loader ran code."""

    def __init__(self, sentinel: str):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_planted_pickles_are_refused_and_never_run(tmp_path):
    import numpy as np

    from layer_recycling.stores.files import blake, checksummed

    sentinel = tmp_path / "sentinel"
    payload = pickle.dumps(_Payload(str(sentinel)))
    pickle.loads(pickle.dumps(_Payload(str(tmp_path / "proof"))))
    assert (tmp_path / "proof").exists()  # the payload is live
    path = tmp_path / "s"
    filled(path).compact()
    filled(path, n=16)  # one segment the snapshot does not cover: its index is read directly
    for pattern in ("seg-*.data", "seg-*.keys.npy", "seg-*.spans.npy", "snap-*.loc.npy", "snap-*.keys.npy",
                    "snap-*.json", "seg-*.json", "CURRENT", "store.json"):
        target = max(path.glob(pattern), key=lambda p: p.stat().st_mtime_ns)  # the newest: the unmerged segment
        original = target.read_bytes()
        target.write_bytes(payload)
        with pytest.raises(StoreCorrupted, match=target.name):
            opens_and_reads(path)
        target.write_bytes(original)
    # An object array saved as .npy, its checksum forged into the header: np.load must still refuse it.
    seg = json.loads(max(path.glob("seg-*.json"), key=lambda p: p.stat().st_mtime_ns).read_bytes())["doc"]
    keys_file = path / f"{seg['name']}.{seg['token']}.keys.npy"
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([_Payload(str(sentinel))] * seg["entries"], dtype=object), allow_pickle=True)
    keys_file.write_bytes(buf.getvalue())
    seg["keys_blake2b"] = blake(buf.getvalue())
    (path / f"{seg['name']}.json").write_bytes(checksummed(seg))
    for snap in path.glob("snap-*"):
        snap.unlink()
    (path / "CURRENT").unlink()
    with pytest.raises(StoreCorrupted, match="keys.npy"):
        opens_and_reads(path)
    assert not sentinel.exists()


def test_a_file_where_a_store_directory_is_expected_is_named(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="that is a file; a store is a directory"):
        DiskStore(tmp_path / "f")


def test_input_digests_survive_flush_reopen_merge_and_damage_is_named(tmp_path):
    path = tmp_path / "s"
    ks = keys(9)
    checks = [lr.digest(("inputs", i)) for i in range(9)]
    store = DiskStore(path, compact_after=100)
    store.put_many(ks[:3], [value(k) for k in ks[:3]], checks=checks[:3])
    assert store.checks_many(ks[:4]) == [*checks[:3], None]  # buffered: known at once
    store.put_many(ks[:1], [value(ks[1])], checks=[checks[5]])  # a key already stored keeps its first check
    store.flush()
    store.put_many(ks[3:6], [value(k) for k in ks[3:6]])  # a segment without any: no checks file at all
    store.put_many(ks[6:9], [value(k) for k in ks[6:9]], checks=[checks[6], None, checks[8]])
    store.close()
    want = [*checks[:3], None, None, None, checks[6], None, checks[8]]
    reopened = DiskStore(path)
    assert reopened.checks_many(ks[::-1]) == want[::-1]
    reopened.compact()
    assert DiskStore(path, readonly=True).checks_many(ks) == want  # through the merged snapshot
    assert reopened.cleanup(grace=0) == 0  # the checks files are live, not leftovers
    damaged = next(path.glob("*.checks.npy"))
    damaged.write_bytes(flip(damaged.read_bytes(), 8 * (len(damaged.read_bytes()) - 3)))
    with pytest.raises(StoreCorrupted, match=damaged.name):
        DiskStore(path, readonly=True).checks_many(ks)
    with pytest.raises(ValueError, match="40-char hex"):
        reopened.put_many(keys(1, start=50), [value(ks[0])], checks=["not a digest"])



def test_a_store_inside_another_store_or_on_a_filesystem_without_files_is_refused(tmp_path):
    filled(tmp_path / "s")
    for inner in (tmp_path / "s" / "new", tmp_path / "s" / "a" / "b"):
        with pytest.raises(ValueError, match=r"inside the DiskStore at .*/s, whose files"):
            DiskStore(inner)
        assert not inner.exists()
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "file" / "s", Path("/proc/lr-store")):
        with pytest.raises(FileNotFoundError, match=r"cannot create a DiskStore in .*: expected a directory"):
            DiskStore(path)
