"""DiskStore: round trips per codec, crash safety under SIGKILL, corruption and planted files refused, concurrency."""

from __future__ import annotations

import errno
import itertools
import json
import multiprocessing as mp
import os
import pickle
import random
import shutil
import signal
import struct
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
from layer_recycling.stores import shards as fmt
from layer_recycling.stores.disk import DiskFull, DiskStore, StoreCorrupted

CODECS = ["float32", "float16", "bfloat16", "int8"]
# Worst error per element, relative to the absmax of its row: fp16 and bf16 round to nearest, int8 to scale/2.
RELATIVE_ERROR = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8, "int8": 1 / 254}
FORK = mp.get_context("fork")


def value(key: str, feature: tuple[int, ...] = (8,)) -> torch.Tensor:
    """The state of ``key`` ("k<number>"): derived from the key alone, so any process can check it."""
    i = int(key[1:])
    return torch.randn(i % 7, *feature, generator=torch.Generator().manual_seed(i)) * (1 + i % 5)


def keys(n: int, start: int = 0) -> list[str]:
    return [f"k{i:05d}" for i in range(start, start + n)]


def filled(path, codec: str = "float32", n: int = 12, per_put: int = 4, feature=(8,)) -> DiskStore:
    store = DiskStore(path, dtype=codec)
    for chunk in _chunks(keys(n), per_put):
        store.put_many(chunk, [value(k, feature) for k in chunk])
    return store


def _chunks(xs: list, size: int):
    return (xs[i : i + size] for i in range(0, len(xs), size))


def assert_close(codec: str, got: torch.Tensor, want: torch.Tensor) -> float:
    """Assert ``got`` is ``want`` within the codec's error bound; return the max abs error."""
    assert got.shape == want.shape
    if codec == "float32":
        assert torch.equal(got, want)
        return 0.0
    err = (got.float() - want).abs()
    rowmax = want.abs().amax(dim=tuple(range(1, want.dim())), keepdim=True) if want.numel() else want
    assert (err <= rowmax * RELATIVE_ERROR[codec] * 1.001 + 1e-7).all()
    return float(err.max()) if err.numel() else 0.0


def store_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# ---- round trips ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("feature", [(8,), (3, 4, 2)], ids=["tokens", "feature-maps"])
def test_round_trip_of_ragged_entries(tmp_path, codec, feature):
    store = filled(tmp_path / "s", codec, n=14, feature=feature)
    names = keys(14)
    assert len(store) == 14 and list(store) == names and store.codec == codec
    assert store["k00007"].shape == (0, *feature)  # ragged: no padding, empty entries too
    worst = 0.0
    for reopened in (store, DiskStore(tmp_path / "s"), DiskStore(tmp_path / "s", readonly=True)):
        got = reopened.get_many(names[::-1])  # order of the request, not of the store
        worst = max(worst, *(assert_close(codec, g, value(k, feature)) for g, k in zip(got, names[::-1])))
    print(f"{codec} {feature}: max abs error {worst:.3g}")
    default = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(codec, torch.float32)
    assert store["k00001"].dtype == default
    as64 = store.get_many(["k00003"], device="cpu", dtype=torch.float64)[0]
    assert as64.dtype == torch.float64 and as64.device.type == "cpu"
    assert_close(codec, as64, value("k00003", feature).double())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("codec", CODECS)
def test_get_many_decodes_on_the_device(tmp_path, codec):
    store = filled(tmp_path / "s", codec)
    got = store.get_many(keys(12), device="cuda", dtype=torch.float32)
    assert all(g.device.type == "cuda" and g.dtype == torch.float32 for g in got)
    for g, k in zip(got, keys(12)):
        assert_close(codec, g.cpu(), value(k))


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
    store = DiskStore(tmp_path / "s", dtype=torch.float16)
    assert isinstance(store, lr.Store) and store.codec == "float16" and len(store) == 0
    store["a"] = torch.ones(3, 2)
    store.put_many(["b", "a", "b"], [torch.zeros(5, 2), torch.full((1, 2), 7.0), torch.ones(9, 2)])
    assert "a" in store and "z" not in store and 3 not in store and sorted(store) == ["a", "b"]
    assert torch.equal(store["a"], torch.ones(3, 2, dtype=torch.float16))  # a stored key is kept, not overwritten
    assert [t.shape[0] for t in store.get_many(["b", "a"])] == [5, 3] and store.get_many([]) == []
    with pytest.raises(KeyError, match="'z' is not in the store"):
        store["z"]
    info = store.info()
    assert (info["entries"], info["keys"], info["tokens"], info["shards"], info["codec"]) == (2, 2, 8, 2, "float16")
    assert info["bytes"] > 8 * 2 * 2 and info["created_by"] == f"layer_recycling {lr.__version__}"
    clone = pickle.loads(pickle.dumps(store))
    assert sorted(clone) == ["a", "b"] and torch.equal(clone["b"], store["b"])
    other = DiskStore(tmp_path / "s")
    store.put_many(["c"], [torch.ones(2, 2)])
    assert "c" in other and len(other) == 3  # a miss re-reads the manifest: other writers' entries appear
    with store:
        store.flush()
    assert torch.equal(store["c"], torch.ones(2, 2, dtype=torch.float16))  # reopens lazily after close


def test_maps_are_reopened_after_eviction(tmp_path, monkeypatch):
    from layer_recycling.stores import disk

    monkeypatch.setattr(disk, "_MAX_MAPS", 2)
    store = filled(tmp_path / "s", n=12, per_put=2)  # 6 shards
    for _ in range(2):
        assert all(torch.equal(store[k], value(k)) for k in keys(12))
    assert len(store._maps) == 2 and len(store._verified) == 6  # each shard hashed once, however often mapped


def test_bad_inputs_are_refused_with_the_fix(tmp_path):
    store = DiskStore(tmp_path / "s", dtype="float16")
    store.put_many(["a"], [torch.ones(2, 4)])
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*\(n, 4\).*one store per state shape"):
        store.put_many(["b"], [torch.ones(2, 3)])
    with pytest.raises(ValueError, match=r"shape \(1, 4, 1\)"):
        store.put_many(["c"], [torch.ones(1, 4, 1)])
    with pytest.raises(ValueError, match="beyond float16's range.*dtype='bfloat16'"):
        store.put_many(["d"], [torch.tensor([[1e5, 0, 0, 0]])])
    with pytest.raises(TypeError, match="str content digests"):
        store.put_many([3], [torch.ones(1, 4)])
    with pytest.raises(TypeError, match="floating tensors of >= 1 dim.*torch.int64"):
        store.put_many(["e"], [torch.ones(1, 4, dtype=torch.long)])
    with pytest.raises(TypeError, match="got a torch.float32 tensor of shape \\(\\)"):
        store.put_many(["e"], [torch.tensor(1.0)])
    assert sorted(store) == ["a"]  # nothing of a refused batch was stored
    with pytest.raises(ValueError, match="holds a 'float16' store.*dtype=None"):
        DiskStore(tmp_path / "s", dtype="int8")
    with pytest.raises(ValueError, match="expected one of"):
        DiskStore(tmp_path / "t", dtype="int4")
    with pytest.raises(ValueError, match="inf or nan"):
        DiskStore(tmp_path / "u", dtype="int8").put_many(["a"], [torch.tensor([[float("nan")]])])
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a DiskStore"):
        DiskStore(tmp_path / "v")
    with pytest.raises(FileNotFoundError, match="readonly=False"):
        DiskStore(tmp_path / "w", readonly=True)


def test_bfloat16_keeps_values_float16_cannot(tmp_path):
    x = torch.tensor([[1e5, -3e6, 0.5]])
    store = DiskStore(tmp_path / "s", dtype=torch.bfloat16)
    store.put_many(["a"], [x])
    assert_close("bfloat16", store["a"], x)


# ---- fingerprint and read-only ---------------------------------------------------------------------------------


def test_fingerprint_is_recorded_and_a_mismatch_refused(tmp_path):
    fp = Fingerprint({"format": "1", "weights": "aa" * 20, "dtype": "float16"})
    store = DiskStore(tmp_path / "s", dtype="float16")
    store.bind_fingerprint(fp)
    store.put_many(["a"], [torch.ones(1, 2)])
    reopened = DiskStore(tmp_path / "s")
    assert reopened.fingerprint_parts == fp.parts and reopened.info()["fingerprint"] == fp.parts
    reopened.bind_fingerprint(fp)  # the same bottom: a hit
    DiskStore(tmp_path / "s", readonly=True).bind_fingerprint(fp)
    changed = Fingerprint({**fp.parts, "weights": "bb" * 20})
    with pytest.raises(lr.FingerprintMismatch, match=r"DiskStore\('.*s'.*weights differ"):
        DiskStore(tmp_path / "s").bind_fingerprint(changed)
    with pytest.raises(lr.FingerprintMismatch):
        DiskStore(tmp_path / "s", readonly=True).bind_fingerprint(changed)


def test_recycle_fills_a_disk_store_and_a_new_process_reuses_it(tmp_path, bert):
    examples = text_examples(8)
    rec = lr.recycle(bert, at=2, store=DiskStore(tmp_path / "s", dtype="float16")).eval()
    assert rec.fill(examples, batch_size=3, progress=False) == 8  # no flush: put_many commits each batch
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
    shutil.copytree(tmp_path / "s", tmp_path / "copy", ignore=shutil.ignore_patterns(".lock"))
    store = DiskStore(tmp_path / "copy", readonly=True)
    assert torch.equal(store["k00003"], value("k00003"))
    with pytest.raises(PermissionError, match="readonly=True"):
        store.put_many(["x"], [torch.ones(1, 8)])
    assert ".lock" not in store_files(tmp_path / "copy")


def _check_read_only_directory(path: str) -> None:
    """In an unprivileged process: the directory is really read-only, and the store reads fine from it."""
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)  # nobody: root ignores file modes
    with pytest.raises(PermissionError):
        Path(path, "probe").touch()
    store = DiskStore(path, readonly=True)
    assert sorted(store) == keys(12) and all(torch.equal(store[k], value(k)) for k in keys(12))
    with pytest.raises(PermissionError, match="readonly=True"):
        DiskStore(path)


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
        filled(root / "s")
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


# ---- crashes, concurrency, full disks ---------------------------------------------------------------------------


def _fill(path: str, names: list[str], per_put: int, codec: str = "float16") -> None:
    store = DiskStore(path, dtype=codec)
    todo = [k for k in names if k not in store]  # resume: only what is missing
    for chunk in _chunks(todo, per_put):
        store.put_many(chunk, [value(k) for k in chunk])


def check_store(path: Path, codec: str = "float16") -> DiskStore:
    """Open the store as a crash left it: every visible entry is complete and right, none is stored twice."""
    store = DiskStore(path, readonly=True)
    names = list(store)
    for got, k in zip(store.get_many(names), names):
        assert_close(codec, got, value(k))
    assert store.info()["entries"] == len(names)
    return store


def _kill_fillers(path: Path, names: list[str], kills: int, seed: int) -> tuple[int, int]:
    """SIGKILL a filler ``kills`` times at random moments, checking the store after each; (entries, leftovers)."""
    rng, killed, seen, leftovers = random.Random(seed), 0, 0, 0
    while killed < kills:
        child = FORK.Process(target=_fill, args=(str(path), names, 4))
        child.start()
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        killed += child.exitcode == -signal.SIGKILL
        if (path / fmt.MANIFEST).exists():
            store = check_store(path)
            assert len(store) >= seen  # committed entries survive every later kill
            seen = len(store)
            live = {r["name"] for r in store._manifest["shards"]}
            leftovers += bool(set(store_files(path)) - live - {fmt.MANIFEST, ".lock"})  # killed mid-write
        if seen == len(names):  # a fast disk finished the fill between kills: start over
            shutil.rmtree(path)
            seen = 0
    return seen, leftovers


def test_sigkill_at_random_points_then_resume(tmp_path):
    path, names = tmp_path / "s", keys(3000)
    _, leftovers = _kill_fillers(path, names, kills=24, seed=0)
    assert leftovers >= 1  # some kills landed between a temp file and its commit
    _fill(str(path), names, 500)
    _fill(str(tmp_path / "ref"), names, 500)
    resumed, reference = check_store(path), DiskStore(tmp_path / "ref")
    assert sorted(resumed) == sorted(reference) == names  # commit order differs; content must not
    assert all(torch.equal(a, b) for a, b in zip(resumed.get_many(names), reference.get_many(names)))
    DiskStore(path)  # a writable open removes what killed writers left behind
    live = {r["name"] for r in resumed._manifest["shards"]}
    assert set(store_files(path)) == live | {fmt.MANIFEST, ".lock"}


@pytest.mark.slow
def test_many_more_sigkills(tmp_path):
    _, leftovers = _kill_fillers(tmp_path / "s", keys(3000), kills=100, seed=1)
    assert leftovers >= 5


def _fill_together(barrier, path: str, names: list[str], per_put: int) -> None:
    barrier.wait()  # both fillers open and write at the same moment
    _fill(path, names, per_put)


def test_two_fillers_at_once_store_each_key_once(tmp_path):
    names = keys(600)
    for trial in range(3):
        path, barrier = str(tmp_path / f"s{trial}"), FORK.Barrier(2)
        fillers = [FORK.Process(target=_fill_together, args=(barrier, path, order, size))
                   for order, size in ((names, 6), (names[::-1], 5))]
        for f in fillers:
            f.start()
        for f in fillers:
            f.join(120)
        assert [f.exitcode for f in fillers] == [0, 0]
        store = check_store(Path(path))
        assert sorted(store) == names and store.info()["entries"] == len(names)
        # Each filler writes its keys in its own order: shards in both orders mean both wrote.
        orders = {tuple(s.keys) == tuple(sorted(s.keys)) for s in store._shards.values() if len(s.keys) > 1}
        assert orders == {True, False}


def test_a_full_disk_names_the_file_and_keeps_what_was_committed(tmp_path, monkeypatch):
    store = filled(tmp_path / "s", "int8", n=8)
    real_write, failed = os.write, 0
    for nth in range(1, 12):
        calls = itertools.count(1)

        def write(fd, data, nth=nth, calls=calls):
            if next(calls) == nth:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        before = sorted(store)
        monkeypatch.setattr(os, "write", write)
        try:
            store.put_many(keys(4, start=8 + 4 * nth), [value(k) for k in keys(4, start=8 + 4 * nth)])
        except DiskFull as e:
            failed += 1
            assert isinstance(e, OSError) and e.errno == errno.ENOSPC
            assert str(tmp_path / "s") in str(e) and "bytes needed" in str(e) and "intact" in str(e)
            assert sorted(DiskStore(tmp_path / "s", readonly=True)) == before
        monkeypatch.setattr(os, "write", real_write)
        assert not [n for n in store_files(tmp_path / "s") if n.endswith(".tmp")]
        live = {r["name"] for r in DiskStore(tmp_path / "s", readonly=True)._manifest["shards"]}
        assert {n for n in store_files(tmp_path / "s") if n.startswith("shard-")} == live
    assert failed >= 5  # every write of a shard and of the manifest was hit once
    for k in DiskStore(tmp_path / "s"):
        assert_close("int8", store[k], value(k))


def test_dataloader_workers_read_the_same_batches(tmp_path):
    store = filled(tmp_path / "s", "bfloat16", n=24)
    items = [(k, {"labels": torch.tensor(i % 3)}, value(k).shape[0]) for i, k in enumerate(keys(24))]
    dataset = lr.CachedDataset(store, items, torch.float32)
    plain = list(torch.utils.data.DataLoader(dataset, batch_size=5, collate_fn=dataset.collate))
    for context in ("fork", "spawn"):
        loader = torch.utils.data.DataLoader(dataset, batch_size=5, collate_fn=dataset.collate, num_workers=2,
                                             multiprocessing_context=context)
        workers = list(loader)
        assert len(workers) == len(plain) == 5
        for a, b in zip(plain, workers):
            assert a.keys() == b.keys()
            assert all(a[n].numpy().tobytes() == b[n].numpy().tobytes() for n in a), context


def test_reading_a_few_entries_maps_only_their_pages(tmp_path):
    path = tmp_path / "big"
    store = DiskStore(path)
    for s in range(20):  # 20 shards of 10 entries of 1 MB: 200 MB
        chunk = keys(10, start=10 * s)
        store.put_many(chunk, [torch.full((256, 1024), float(int(k[1:]))) for k in chunk])
    assert store.info()["bytes"] > 200e6
    code = (
        "import sys, torch\nfrom layer_recycling.stores.disk import DiskStore\n"
        "def rss(): return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]) * 1024\n"
        "before = rss(); s = DiskStore(sys.argv[1], readonly=True)\n"
        "got = s.get_many(['k00003', 'k00051', 'k00107', 'k00150', 'k00199'])\n"
        "assert [float(g[0, 0]) for g in got] == [3, 51, 107, 150, 199]\n"
        "del got; print(rss() - before)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    growth = int(out.stdout)
    print(f"RSS growth after opening a 200 MB store and reading 5 entries: {growth / 1e6:.1f} MB")
    assert growth < 50e6


# ---- corruption and planted files -------------------------------------------------------------------------------


def _opens_and_reads(path: Path) -> None:
    store = DiskStore(path, readonly=True)
    names = list(store)
    for got, k in zip(store.get_many(names), names):
        assert_close(store.codec, got, value(k))  # reached only if nothing was detected: then it must be right


@pytest.mark.parametrize("codec", ["float16", "int8"])
def test_every_truncation_and_bit_flip_is_refused(tmp_path, codec):
    path = tmp_path / "s"
    filled(path, codec, n=10, per_put=5)
    files = [n for n in store_files(path) if n != ".lock"]
    rng, cases, missed = random.Random(codec), 0, []
    for name in files:
        original = (path / name).read_bytes()
        cuts = {0, 1, 8, 15, 16, 17, len(original) // 2, len(original) - 1, *rng.sample(range(len(original)), 12)}
        flips = rng.sample(range(len(original) * 8), 90)
        damaged = [original[:c] for c in cuts] + [_flip(original, bit) for bit in flips]
        for data in damaged:
            (path / name).write_bytes(data)
            cases += 1
            try:
                _opens_and_reads(path)
                missed.append((name, len(data)))
            except StoreCorrupted as e:
                assert str(path / name) in str(e)  # the error names the damaged file
        (path / name).write_bytes(original)
    _opens_and_reads(path)
    assert cases >= 100 and not missed


def test_every_bit_of_the_manifest_and_of_a_header(tmp_path):
    path = tmp_path / "s"
    filled(path, "int8", n=6, per_put=3)
    shard = DiskStore(path)._manifest["shards"][0]["name"]
    for name, size in ((fmt.MANIFEST, None), (shard, 512)):
        original = (path / name).read_bytes()
        for bit in range(len(original[:size]) * 8):
            (path / name).write_bytes(_flip(original, bit))
            with pytest.raises(StoreCorrupted):
                _opens_and_reads(path)
        (path / name).write_bytes(original)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


class _Payload:
    """Unpickling this creates the sentinel file: the proof that a loader ran code."""

    def __init__(self, sentinel: str):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_planted_pickles_are_refused_and_never_run(tmp_path):
    sentinel = tmp_path / "sentinel"
    payload = pickle.dumps(_Payload(str(sentinel)))
    pickle.loads(pickle.dumps(_Payload(str(tmp_path / "proof"))))
    assert (tmp_path / "proof").exists()  # the payload is live
    path = tmp_path / "s"
    store = filled(path)
    shard = store._manifest["shards"][0]
    (path / shard["name"]).write_bytes(payload)
    with pytest.raises(StoreCorrupted, match=shard["name"]):
        _opens_and_reads(path)
    _rewrite_manifest(path, lambda m: m["shards"][0].update(bytes=len(payload), blake2b=fmt._blake(payload)))
    with pytest.raises(StoreCorrupted, match="not a DiskStore shard"):
        _opens_and_reads(path)  # the manifest agrees with the planted file: its content still is not a shard
    (path / fmt.MANIFEST).write_bytes(payload)
    with pytest.raises(StoreCorrupted, match="manifest"):
        _opens_and_reads(path)
    assert not sentinel.exists()


def _rewrite_manifest(path: Path, edit) -> None:
    """Apply ``edit`` to the manifest and re-sign it: a forgery that only the field checks can catch."""
    raw = json.loads((path / fmt.MANIFEST).read_bytes())["manifest"]
    edit(raw)
    (path / fmt.MANIFEST).write_bytes(fmt.manifest_bytes(raw))


def _rewrite_header(path: Path, edit) -> None:
    """Apply ``edit`` to the first shard's header, rebuild the file around it and re-sign the manifest."""
    manifest = json.loads((path / fmt.MANIFEST).read_bytes())["manifest"]
    rec = manifest["shards"][0]
    raw = (path / rec["name"]).read_bytes()
    n = struct.unpack("<Q", raw[8:16])[0]
    old_start = 16 + n + fmt._pad(16 + n)
    header = json.loads(raw[16 : 16 + n])
    edit(header, rec)
    body = json.dumps(header).encode()
    prefix = fmt.MAGIC + struct.pack("<Q", len(body)) + body
    data = prefix + bytes(fmt._pad(len(prefix))) + raw[old_start:]
    (path / rec["name"]).write_bytes(data)
    rec.update(bytes=len(data), blake2b=fmt._blake(data), header_blake2b=fmt._blake(body))
    (path / fmt.MANIFEST).write_bytes(fmt.manifest_bytes(manifest))


def _set(field, i, v):
    return lambda h, rec: h[field].__setitem__(i, v)


HEADER_FORGERIES = {
    "offset beyond the file": _set("offsets", 1, 10**6),
    "span past the end": _set("lengths", 3, 10**3),
    "overlapping spans": _set("offsets", 3, 2),  # rows 1-2 and 2-4: row 2 twice
    "negative offset": _set("offsets", 1, -4),
    "negative length": _set("lengths", 1, -1),
    "huge offset": _set("offsets", 0, 10**30),
    "huge length": _set("lengths", 0, 2**64),
    "float offset": _set("offsets", 1, 1.5),
    "bool length": _set("lengths", 1, True),
    "key not a str": _set("keys", 0, 7),
    "duplicate key": lambda h, rec: h["keys"].__setitem__(1, h["keys"][0]),
    "missing keys": lambda h, rec: h.pop("keys"),
    "empty header": lambda h, rec: h.clear(),
    "fewer lengths": lambda h, rec: h["lengths"].pop(),
    "another shape": lambda h, rec: h.update(feature_shape=[4]),
    "another codec": lambda h, rec: h.update(codec="int8"),
    "huge row count": lambda h, rec: (h.update(rows=10**18), rec.update(rows=10**18)),
}
MANIFEST_FORGERIES = {
    "path outside the store": lambda m: m["shards"][0].update(name="../../etc/passwd"),
    "shard twice": lambda m: m["shards"].append(m["shards"][0]),
    "negative bytes": lambda m: m["shards"][0].update(bytes=-1),
    "count not an int": lambda m: m["shards"][0].update(entries="4"),
    "unknown codec": lambda m: m.update(codec="pickle"),
    "future format": lambda m: m.update(format=99),
    "negative feature": lambda m: m.update(feature_shape=[-8]),
    "fingerprint not strs": lambda m: m.update(fingerprint={"weights": 3}),
    "shards not a list": lambda m: m.update(shards={"a": 1}),
    "empty manifest": lambda m: m.clear(),
    "missing shard file": lambda m: m["shards"][0].update(name="shard-" + "0" * 32 + ".bin"),
}


@pytest.mark.parametrize("forgery", HEADER_FORGERIES, ids=list(HEADER_FORGERIES))
def test_forged_shard_headers_are_refused(tmp_path, forgery):
    path = tmp_path / "s"
    filled(path, n=8)
    _rewrite_header(path, HEADER_FORGERIES[forgery])
    with pytest.raises(StoreCorrupted, match="shard-"):
        _opens_and_reads(path)


@pytest.mark.parametrize("forgery", MANIFEST_FORGERIES, ids=list(MANIFEST_FORGERIES))
def test_forged_manifests_are_refused(tmp_path, forgery):
    path = tmp_path / "s"
    filled(path, n=8)
    _rewrite_manifest(path, MANIFEST_FORGERIES[forgery])
    with pytest.raises(StoreCorrupted):
        _opens_and_reads(path)
    with pytest.raises(StoreCorrupted):
        DiskStore(path)  # a writable open refuses too, and deletes nothing
    assert len([n for n in store_files(path) if n.startswith("shard-")]) == 2
