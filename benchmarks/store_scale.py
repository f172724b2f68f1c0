"""DiskStore at 10k, 100k and 1M entries: commit cost over a fill, open time, index memory, reads, merge, workers.

    PYTHONPATH=src python benchmarks/store_scale.py --dir /tmp/lr-scale --sizes 10000 100000 1000000 \
        --keys digest sequential shared-prefix

States are synthetic float16, hidden 384, ``--tokens`` (default 4) tokens per entry, so that a 1M-entry store
(about 3 GB) fits on this disk; real text states have ~100-500 tokens and larger segments, which only makes the
per-entry index cost smaller relative to the data. Keys (``--keys``): 20-byte blake2b digests as ``lr.digest``
makes; ``sequential``, the number in hex (``f"{i:040x}"``: every key shares its first 12 bytes); ``shared-prefix``,
8 fixed bytes then 12 of a digest. Keys that share their leading bytes are what a user's own scheme makes (ids, a
hash with a fixed prefix) and what an adversary can choose; each pattern is measured as digests are, and the
digests' figures are the reference.

Reports, per size: time per segment commit at the start vs the end of the fill (wall; the CPU time of the thread
that commits, and its user part: the store's own work apart from the disk and the kernel; the last, partial
segment is left out), and the same for plain synced files of the segment size written with os.write (what the
disk and the page cache do to any writer); the whole fill vs writing the same bytes to one file with numpy (+
fsync); open time and memory growth after open, after one batched lookup (``contains_many`` of 32 random keys, in
a fresh process) and after reading them (the first read hashes each segment it touches), anonymous apart from
file-backed (``RssAnon``, ``RssFile``), in a bare process and after a 16 MB block was freed (glibc then keeps
freed temporaries of up to that size: the state of any process that loaded a model); random batches of 32 with a
warm page cache (GB/s), with the lookups alone and the floor of one bare pread per entry; merge time and its peak
memory in a fresh process (and a projection to 100M entries by fitting t = c * n * log2(n) to the largest
measured size); and at the largest size, one epoch through a DataLoader with 4 workers with how much each
worker's RSS (anonymous and file-backed) grew over its first read: what reading the store costs a worker, apart
from the parent's memory it was forked with. Open, first lookup and random batches are measured twice: before the
merge (the segments' own indexes, found through the index of unmerged keys) and after it (the merged snapshot).
The controls (numpy, plain files, the DataLoader epoch) run for digests only: they do not depend on the keys.
Writes JSON. A 2,000-entry fill runs first and is not counted: the first fill in a process pays one-time costs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from layer_recycling.stores import disk, snapshot
from layer_recycling.stores.disk import DiskStore
from timing import meta, timed

HIDDEN = 384
PATTERNS = ("digest", "sequential", "shared-prefix")
PREFIX = "5eed" * 4  # the 8 bytes every shared-prefix key starts with


def key(i: int, pattern: str = "digest") -> str:
    """Key ``i`` of ``pattern`` (one of PATTERNS)."""
    digest = hashlib.blake2b(i.to_bytes(8, "little"), digest_size=20).hexdigest()
    if pattern == "sequential":
        return f"{i:040x}"
    return PREFIX + digest[:24] if pattern == "shared-prefix" else digest


def _pool(tokens: int) -> torch.Tensor:
    return torch.randn(4096 + tokens, HIDDEN, generator=torch.Generator().manual_seed(0)).half()


def fill(path: Path, n: int, tokens: int, segment_bytes: int, pattern: str = "digest") -> dict:
    """Fill ``n`` entries through put_many in batches of 32; time each segment commit where it runs
    (``write_segment``, in a commit thread while the next buffer fills): its wall time, which includes waiting for
    the disk (``fsync``, and ``write`` once the kernel throttles writers with too many dirty pages), its thread's
    CPU time, and of that the user time: the store's own work, apart from the kernel's copying into (and
    reclaiming) page cache."""
    pool, store = _pool(tokens), DiskStore(path, codec="float16", segment_bytes=segment_bytes)
    commits, cpu, user, real = [], [], [], disk.write_segment

    def timed_commit(*job):
        start, usage = time.thread_time(), resource.getrusage(resource.RUSAGE_THREAD)
        header, t = timed(lambda: real(*job))
        commits.append(t)
        cpu.append(time.thread_time() - start)
        user.append(resource.getrusage(resource.RUSAGE_THREAD).ru_utime - usage.ru_utime)
        return header

    disk.write_segment = timed_commit
    try:
        start = time.perf_counter()
        for lo in range(0, n, 32):
            ids = range(lo, min(n, lo + 32))
            store.put_many([key(i, pattern) for i in ids], [pool[i % 4096 : i % 4096 + tokens] for i in ids])
        store.close()
        total = time.perf_counter() - start
    finally:
        disk.write_segment = real
    # The last segment holds what was left (usually less than a full one): the end is the full ones before it.
    full = len(commits) - 1 if len(commits) > 2 else len(commits)
    k = max(1, min(3, full // 3))
    return {"fill_s": total, "segments": len(commits), "commit_start_s": statistics.median(commits[:k]),
            "commit_end_s": statistics.median(commits[full - k : full]),
            "commit_cpu_start_s": statistics.median(cpu[:k]),
            "commit_cpu_end_s": statistics.median(cpu[full - k : full]),
            "commit_user_start_s": statistics.median(user[:k]),
            "commit_user_end_s": statistics.median(user[full - k : full]),
            "commits_s": commits,
            "bytes": store.info()["bytes"]}


def numpy_baseline(path: Path, nbytes: int) -> float:
    """Seconds to write ``nbytes`` of float16 to one file with numpy, in 64 MB chunks, then fsync."""
    chunk = np.random.default_rng(0).standard_normal((64 << 20) // 2).astype(np.float16)
    start = time.perf_counter()
    with open(path, "wb") as f:
        left = nbytes
        while left > 0:
            part = chunk[: max(1, min(len(chunk), left // 2))]
            part.tofile(f)
            left -= part.nbytes
        f.flush()
        os.fsync(f.fileno())
    t = time.perf_counter() - start
    path.unlink()
    return t


def plain_chunks(path: Path, nbytes: int, chunk_bytes: int) -> dict:
    """The store's commits without the store: ``nbytes`` written as files of ``chunk_bytes`` with os.write, each
    synced, timed (wall and CPU) at the start and the end like the commits: what the disk and the kernel's page
    cache do to a plain writer over the same fill."""
    chunk = memoryview(np.random.default_rng(0).standard_normal(chunk_bytes // 2).astype(np.float16)).cast("B")
    wall, cpu = [], []
    for i in range(max(1, nbytes // chunk_bytes)):
        start, start_cpu = time.perf_counter(), time.thread_time()
        fd = os.open(path.with_name(f"{path.name}-{i}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = chunk
            while len(view):
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        wall.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
    for i in range(len(wall)):
        path.with_name(f"{path.name}-{i}").unlink()
    k = max(1, min(3, len(wall) // 3))
    return {"plain_start_s": statistics.median(wall[:k]), "plain_end_s": statistics.median(wall[-k:]),
            "plain_cpu_start_s": statistics.median(cpu[:k]), "plain_cpu_end_s": statistics.median(cpu[-k:])}


OPEN_PROBE = """
import json, random, sys, time
def status():
    return {l.split(':')[0]: int(l.split()[1]) * 1024 for l in open('/proc/self/status')
            if l.startswith(('VmRSS', 'RssAnon', 'RssFile'))}
import torch, numpy
from layer_recycling.stores.disk import DiskStore
from store_scale import key
n, warm = int(sys.argv[2]), sys.argv[4] == "1"
if warm:  # as in a process that loaded a model: glibc's mmap threshold raised, freed blocks kept in its heap
    numpy.ones(16 << 20, numpy.uint8)
keys = [key(i, sys.argv[3]) for i in random.Random(1).sample(range(n), 32)]
before = status(); t = time.perf_counter()
s = DiskStore(sys.argv[1], readonly=True)
opened = time.perf_counter() - t; at_open = status()
t = time.perf_counter(); held = s.contains_many(keys); lookup = time.perf_counter() - t
assert held.all(); at_lookup = status()
t = time.perf_counter(); got = s.get_many(keys); read = time.perf_counter() - t
at_read = status()
growth = {when: {k: now[k] - before[k] for k in now} for when, now in
          (("open", at_open), ("lookup", at_lookup), ("read", at_read))}
print(json.dumps({"open_s": opened, "lookup_s": lookup, "first_read_s": read, "growth": growth,
                  "rss_growth": growth["lookup"]["VmRSS"], "rss_growth_after_read": growth["read"]["VmRSS"]}))
"""


MERGE_PROBE = """
import json, resource, sys, time
from layer_recycling.stores.disk import DiskStore
store = DiskStore(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter(); store.compact(); t = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"merge_s": t, "merge_peak_rss_mb": peak / 1024, "merge_rss_growth_mb": (peak - before) / 1024}))
"""


def merge_probe(path: Path) -> dict:
    """Merge every segment in a fresh process: its time and how much its peak RSS grew (the merge's memory)."""
    out = subprocess.run([sys.executable, "-c", MERGE_PROBE, str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return json.loads(out.stdout)


def open_probe(path: Path, n: int, pattern: str) -> dict:
    """Open ``path`` in a fresh process, look up 32 keys, read them: times, and how much its memory grew after each
    step, anonymous (the process's own) apart from file-backed (page cache mapped, shared by every process), per
    entry; once in a bare process, once after a 16 MB block was freed (``warm_heap``: glibc then keeps freed blocks
    up to that size in its heap, as in any process that loaded a model)."""
    runs = []
    for warm in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", OPEN_PROBE, str(path), str(n), pattern, warm], capture_output=True,
                             text=True, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        runs.append(json.loads(out.stdout))
    res, warm = runs
    res["rss_bytes_per_entry"] = res["rss_growth"] / n
    for name, run in (("per_entry", res), ("warm_heap_per_entry", warm)):
        res[name] = {when: {"anon": g["RssAnon"] / n, "file": g["RssFile"] / n} for when, g in run["growth"].items()}
    return res


def random_reads(path: Path, n: int, pattern: str, batches: int = 1000, passes: int = 3) -> dict:
    """``batches`` random batches of 32 keys, read once to warm the page cache (and hash each touched segment),
    then timed over ``passes`` passes; the fastest pass counts (the least disturbed by the rest of the machine).

    Also timed the same way: the lookups alone (``locate``), and the floor: one bare ``os.preadv`` per entry of
    the same rows from the same files, which is what reading them costs the OS whatever the store does."""
    store, rng = DiskStore(path, readonly=True), random.Random(2)
    picks = [[key(i, pattern) for i in rng.sample(range(n), 32)] for _ in range(batches)]
    for p in picks:
        store.get_many(p)
    t = min(timed(lambda: [store.get_many(p) for p in picks])[1] for _ in range(passes))
    nbytes = sum(x.numel() * 2 for p in picks[:1] for x in store.get_many(p)) * batches  # every entry: same size
    locate = min(timed(lambda: [store._locate(p) for p in picks])[1] for _ in range(passes))
    rowbytes = 2 * HIDDEN
    reads = [(seg.fd(), int(lo) * rowbytes, int(rows) * rowbytes) for p in picks
             for _, segs, spans in [store._locate(p)] for seg, (lo, rows) in zip(segs, spans)]
    out = memoryview(bytearray(max(r[2] for r in reads)))
    floor = min(timed(lambda: [os.preadv(fd, [out[:size]], at) for fd, at, size in reads])[1] for _ in range(passes))
    return {"batch_ms": 1000 * t / batches, "gb_per_s": nbytes / t / 1e9, "locate_ms": 1000 * locate / batches,
            "pread_floor_ms": 1000 * floor / batches}


class _Batches(torch.utils.data.Dataset):
    """Batch i is 32 keys computed from positions: the dataset holds nothing per entry."""

    def __init__(self, store: DiskStore, order: np.ndarray):
        self.store, self.order = store, order

    def __len__(self) -> int:
        return math.ceil(len(self.order) / 32)

    def __getitem__(self, i: int):
        ids = self.order[32 * i : 32 * i + 32]
        first = _FIRST.setdefault(os.getpid(), _status())  # the worker as forked, before its first read
        states = self.store.get_many([key(int(j)) for j in ids])
        growth = {k: v - first[k] for k, v in _status().items()}  # what reading the store added in this worker
        info = torch.utils.data.get_worker_info()
        return sum(s.shape[0] for s in states), (info.id if info else -1), growth


_FIRST: dict[int, dict] = {}


def _status() -> dict[str, int]:
    return {l.split(":")[0]: int(l.split()[1]) * 1024 for l in open("/proc/self/status")
            if l.startswith(("VmRSS", "RssAnon", "RssFile"))}


def epoch(path: Path, n: int, workers: int = 4) -> dict:
    order = np.random.default_rng(3).permutation(n)
    loader = torch.utils.data.DataLoader(_Batches(DiskStore(path, readonly=True), order), batch_size=None,
                                         num_workers=workers, multiprocessing_context="fork")
    peak: dict[int, dict] = {}
    rows, start = 0, time.perf_counter()
    for got, wid, status in loader:
        rows += got
        peak[wid] = {k: max(v, peak.get(wid, {}).get(k, 0)) for k, v in status.items()}
    return {"epoch_s": time.perf_counter() - start, "rows": rows, "workers": workers,
            "per_worker_growth_mb": {w: {k: round(v / 1e6, 1) for k, v in p.items()} for w, p in sorted(peak.items())}}


def measure(args, pattern: str, n: int, controls: bool) -> dict:
    """Fill a store of ``n`` entries under ``pattern`` keys and measure it before and after its merge; the disk
    controls (and at the largest size, the DataLoader epoch) too where ``controls``."""
    path = args.dir / f"store-{pattern}-{n}"
    shutil.rmtree(path, ignore_errors=True)
    r = fill(path, n, args.tokens, args.segment_mb << 20, pattern)
    # Before the merge, every unmerged segment is found through one index of their keys (where keys that share
    # their leading bytes once cost a Python step per entry); after it, through the snapshot's sorted keys.
    r["unmerged"] = {**open_probe(path, n, pattern), **random_reads(path, n, pattern)}
    r.update(merge_probe(path))
    r.update(open_probe(path, n, pattern))
    r.update(random_reads(path, n, pattern))
    if controls and n == max(args.sizes):
        r["epoch"] = epoch(path, n)
    if controls:  # last: the baseline's 3 GB of writeback would otherwise slow the reads measured above (seen: 3x)
        r["numpy_s"] = numpy_baseline(args.dir / "baseline.bin", r["bytes"])
        r.update(plain_chunks(args.dir / "plain", r["bytes"], args.segment_mb << 20))
    del r["commits_s"][3:-3]
    if not args.keep:
        shutil.rmtree(path)
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/lr-scale"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--keys", nargs="+", choices=PATTERNS, default=list(PATTERNS))
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--segment-mb", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/store_scale.json"))
    ap.add_argument("--keep", action="store_true", help="keep the stores (deleted by default)")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    results = {"meta": meta(), "tokens": args.tokens, "hidden": HIDDEN, "segment_mb": args.segment_mb, "keys": {}}
    # The first fill in a process pays one-time costs (torch's first calls, the allocator's first pages): a small
    # throwaway fill first, so that the sizes compare what grows with size.
    warmup = fill(args.dir / "warmup", 2000, args.tokens, args.segment_mb << 20)
    shutil.rmtree(args.dir / "warmup")
    results["warmup_fill_s"] = warmup["fill_s"]
    for pattern in args.keys:
        results["keys"][pattern] = {}
        for n in args.sizes:
            r = measure(args, pattern, n, controls=pattern == "digest")
            results["keys"][pattern][n] = r
            print(json.dumps({"keys": pattern, "n": n, **{k: v for k, v in r.items() if k != "commits_s"}}), flush=True)
    if "digest" in results["keys"]:
        report_digests(results, max(args.sizes))
    report_keys(results["keys"])
    report_memory(results["keys"])
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


def report_digests(results: dict, big: int) -> None:
    """The fill against the disk controls, merge, open, memory and reads, per size, for digest keys."""
    sizes = results["keys"]["digest"]
    rb = sizes[big]
    c = rb["merge_s"] / (big * math.log2(big))
    results["merge_projection_100M_s"] = c * 1e8 * math.log2(1e8)
    print(f"\n{'entries':>9} {'fill s':>8} {'numpy s':>8} {'ratio':>6} {'segs':>5} {'commit start/end':>17} "
          f"{'CPU (user)':>16} {'merge s':>8} {'open s':>7} {'B/entry':>8} {'batch ms':>9} {'GB/s':>6} "
          f"{'locate':>7} {'pread floor':>12} {'rest':>6}")
    for n, r in sizes.items():
        print(f"{n:>9} {r['fill_s']:>8.1f} {r['numpy_s']:>8.1f} {r['fill_s'] / r['numpy_s']:>6.2f} "
              f"{r['segments']:>5} {r['commit_start_s'] * 1e3:>7.0f}/{r['commit_end_s'] * 1e3:.0f} ms "
              f"{r['commit_cpu_start_s'] * 1e3:>4.0f}/{r['commit_cpu_end_s'] * 1e3:.0f} "
              f"({r['commit_user_start_s'] * 1e3:.0f}/{r['commit_user_end_s'] * 1e3:.0f}) ms "
              f"{r['merge_s']:>8.2f} {r['open_s']:>7.3f} {r['rss_bytes_per_entry']:>8.1f} {r['batch_ms']:>9.2f} "
              f"{r['gb_per_s']:>6.2f} {r['locate_ms']:>7.3f} {r['pread_floor_ms']:>12.3f} "
              f"{r['batch_ms'] - r['locate_ms'] - r['pread_floor_ms']:>6.3f}")
    print("the same bytes as plain synced files of one segment's size, start/end (wall; CPU): " + "; ".join(
        f"{n}: {r['plain_start_s'] * 1e3:.0f}/{r['plain_end_s'] * 1e3:.0f} ms; "
        f"{r['plain_cpu_start_s'] * 1e3:.0f}/{r['plain_cpu_end_s'] * 1e3:.0f} ms" for n, r in sizes.items()))
    print(f"merge at 100M entries, projected as c * n log2 n from {big}: {results['merge_projection_100M_s']:.0f} s; "
          f"the merge's peak RSS grew {rb['merge_rss_growth_mb']:.0f} MB at {big} (ranges of "
          f"{snapshot.MERGE_ROWS} entries: bounded at any size)")
    if "epoch" in rb:
        print(f"epoch over {big} entries, 4 workers: {rb['epoch']['epoch_s']:.1f} s; per worker, the most its RSS "
              f"grew over its first read (MB): {rb['epoch']['per_worker_growth_mb']}")


def report_keys(by_pattern: dict) -> None:
    """Per key pattern and size, before and after the merge: open + first lookup (s), RSS growth over them (MB),
    a random batch of 32 (ms); in brackets, the ratio to digests at that size."""
    heads = " ".join(f"{h:>16}" for h in ("open+lookup s", "RSS MB", "batch ms"))
    print(f"\n{'':>22} {'':>16} | {'before the merge':^50} | {'merged':^50}")
    print(f"{'keys':>13} {'entries':>8} {'fill s':>16} | {heads} | {heads}")
    for pattern, sizes in by_pattern.items():
        for n, r in sizes.items():
            ref = by_pattern.get("digest", {}).get(n)
            cells = [_cell(r, ref, "fill_s", 1, 2)]
            for where in ("unmerged", None):
                at, base = (r[where], ref and ref[where]) if where else (r, ref)
                cells += [_cell(at, base, "open_lookup_s", 1, 3), _cell(at, base, "rss_growth", 1e-6, 1),
                          _cell(at, base, "batch_ms", 1, 3)]
            print(f"{pattern:>13} {n:>8} {cells[0]} | {' '.join(cells[1:4])} | {' '.join(cells[4:])}")


def report_memory(by_pattern: dict) -> None:
    """Per key pattern and size, before and after the merge: bytes per entry a fresh process's memory grew by at
    open, after one lookup and after reading its 32 entries, anonymous (file-backed), in a bare process and after
    a 16 MB block was freed (``warm heap``); then, between consecutive sizes, the growth per added entry: what
    grows with the store, apart from fixed costs (modules imported on first use, read buffers)."""
    steps = ("open", "lookup", "read")
    print(f"\nmemory growth, bytes per entry: anonymous (file-backed); open, lookup, read")
    print(f"{'keys':>13} {'entries':>9} {'index':>9} | {'bare process':^41} | {'warm heap':^41}")
    for pattern, sizes in by_pattern.items():
        for where in ("unmerged", "merged"):
            at = {n: (r[where] if where == "unmerged" else r) for n, r in sizes.items()}
            for n, r in at.items():
                print(f"{pattern:>13} {n:>9} {where:>9} | {_memory_cells(r, steps, 1)}")
            ns = sorted(at)
            for small, big in zip(ns, ns[1:]):
                grown = {k: {w: {m: (at[big][k][w][m] * big - at[small][k][w][m] * small) / (big - small)
                                 for m in ("anon", "file")} for w in steps}
                         for k in ("per_entry", "warm_heap_per_entry")}
                print(f"{pattern:>13} {f'+{big - small}':>9} {where:>9} | {_memory_cells(grown, steps, 1)}")


def _memory_cells(r: dict, steps: tuple, digits: int) -> str:
    cells = [f"{r[k][w]['anon']:>5.{digits}f} ({r[k][w]['file']:>4.{digits}f})"
             for k in ("per_entry", "warm_heap_per_entry") for w in steps]
    return f"{' '.join(cells[:3])} | {' '.join(cells[3:])}"


def _cell(r: dict, ref: dict | None, name: str, scale: float, digits: int) -> str:
    """``r[name]`` scaled, and its ratio to ``ref[name]`` in brackets where ``ref`` (the digests') is another run;
    16 characters."""
    value = r["open_s"] + r["lookup_s"] if name == "open_lookup_s" else r[name]
    ratio = ""
    if ref is not None and ref is not r:
        base = ref["open_s"] + ref["lookup_s"] if name == "open_lookup_s" else ref[name]
        ratio = f"({value / base:.2f}x)" if base else ""
    return f"{value * scale:>7.{digits}f} {ratio:>8}"


if __name__ == "__main__":
    sys.exit(main())
