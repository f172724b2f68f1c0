"""A fill and a loader at 100k, 1M and 10M examples: peak memory per example, and how it grows with the count.

    PYTHONPATH=src python benchmarks/fill_scale.py --dir /tmp/lr-fill-scale --sizes 100000 1000000 10000000

Each size runs in a fresh process: a tiny BERT (hidden 8, one block recycled, so that the model's own memory and
time do not count), short examples of 3 token ids made on the fly by a generator (the source costs nothing: what
grows is the library's), a float16 DiskStore. Reported per size: the process's peak RSS over the fill (VmHWM,
file-backed pages of the store's index included), the same above its RSS before the fill, and the peaks of its
anonymous, file-backed and shared memory above theirs before (sampled every 20 ms), and the RSS a built loader adds
(`rec.loader` over the same generator, all hits: keys, lengths and labels), anonymous, file-backed and shared
apart, each also per example; then the growth of each from the smallest to the largest size. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from timing import meta


PARTS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")  # the loader's growth, and its kinds of memory
KINDS = PARTS[1:]


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM, RssAnon, RssFile)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class Peaks:
    """The largest RssAnon, RssFile and RssShmem seen while it runs (sampled every 20 ms; each its own peak): VmHWM
    counts every resident page, the store's memory-mapped index pages (file-backed, reclaimable) too."""

    def __enter__(self):
        self.peak, self._stop = {f: _status(f) for f in KINDS}, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for f in KINDS:
                self.peak[f] = max(self.peak[f], _status(f))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here on


def examples(n: int):
    """``n`` distinct examples of 3 token ids and a class label, made as they are read."""
    for i in range(n):
        yield {"input_ids": [1 + i % 97, 1 + i // 97 % 97, 1 + i // 9409 % 97 + 97 * (i // 912673)], "label": i % 2}


def recycled(n: int, folder: str):
    """The tiny recycled BERT over a fresh float16 DiskStore in ``folder``, its first fill's one-time costs paid."""
    import torch
    import transformers as T
    import layer_recycling as lr

    torch.manual_seed(0)
    shutil.rmtree(Path(folder) / f"s{n}", ignore_errors=True)  # a fresh store: an earlier run's would be all hits
    config = T.BertConfig(vocab_size=1200, hidden_size=8, num_hidden_layers=2, num_attention_heads=1,
                          intermediate_size=16, max_position_embeddings=8, num_labels=2)
    rec = lr.recycle(T.BertForSequenceClassification(config).eval(), at=1,
                     store=lr.DiskStore(Path(folder) / f"s{n}", codec="float16"))
    rec.fill(examples(2000), batch_size=1024, progress=False)  # one-time costs of a first fill, not counted
    return rec


def reporting(items, every: int, sampled: Peaks, kinds: dict):
    """``items``, printing to stderr every ``every`` of them the peaks so far (a long run that is cut says where it
    got)."""
    for i, item in enumerate(items):
        if i and i % every == 0:
            print(json.dumps({"read": i, "hwm_bytes": _status("VmHWM"),
                              **{f"{f}_peak_bytes": sampled.peak[f] - kinds[f] for f in KINDS}}),
                  file=sys.stderr, flush=True)
        yield item


def one(n: int, folder: str, every: int) -> dict:
    rec = recycled(n, folder)
    _reset_peak()
    before, kinds, start = _status("VmRSS"), {f: _status(f) for f in KINDS}, time.perf_counter()
    with Peaks() as sampled:
        added = rec.fill(reporting(examples(n), every, sampled, kinds), batch_size=1024, progress=False)
    fill_s, fill_hwm = time.perf_counter() - start, _status("VmHWM")
    fill = {"fill_peak_bytes": fill_hwm - before, "fill_hwm_bytes": fill_hwm, "fill_rss_before_bytes": before,
            **{f"fill_{f}_peak_bytes": sampled.peak[f] - kinds[f] for f in KINDS},
            **{f"fill_{f}_before_bytes": kinds[f] for f in KINDS}}
    _reset_peak()
    before = {f: _status(f) for f in PARTS}
    loader = rec.loader(examples(n), batch_size=256, shuffle=True, progress=False)
    grew = {f: _status(f) - before[f] for f in PARTS}
    loader_rss, loader_peak = grew["VmRSS"], _status("VmHWM") - before["VmRSS"]
    counts = (n, len(loader.dataset), added, rec.stats.bottom_examples)
    assert counts[1] == n and counts[3] == 2000 + added, f"examples, loader, added, bottom runs: {counts}"
    return {"examples": n, "added": added, "fill_s": fill_s, **fill, "fill_peak_per_example": fill["fill_peak_bytes"] / n,
            "loader_bytes": loader_rss,
            "loader_per_example": loader_rss / n,
            "loader_build_peak_bytes": loader_peak, "store_bytes": rec.store.volume(),
            **{f"loader_{f}_bytes": grew[f] for f in PARTS[1:]}}


def main() -> None:
    parser = sizes_parser(__doc__, "/tmp/lr-fill-scale", [100_000, 1_000_000, 10_000_000], "benchmarks/fill_scale.json")
    parser.add_argument("--every", type=int, default=1_000_000, help="print the peaks so far every this many examples")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.dir, args.every)))
        return
    rows = []
    for r in in_fresh_processes(__file__, args.sizes, args.dir, "--every", str(args.every)):
        rows.append(r)
        n = r["examples"]
        print(f"{n:>10,} examples: fill {r['fill_s']:7.1f} s, peak RSS {r['fill_hwm_bytes'] / 2**20:7.1f} MiB, "
              f"+{r['fill_peak_bytes'] / 2**20:6.1f} MiB ({r['fill_peak_per_example']:6.1f} B/ex; peaks: anonymous "
              f"+{r['fill_RssAnon_peak_bytes'] / 2**20:6.1f}, file +{r['fill_RssFile_peak_bytes'] / 2**20:6.1f}, "
              f"shared +{r['fill_RssShmem_peak_bytes'] / 2**20:5.1f} MiB); "
              f"loader +{r['loader_bytes'] / 2**20:6.1f} MiB "
              f"({r['loader_per_example']:5.1f} B/ex: anonymous {r['loader_RssAnon_bytes'] / n:5.1f}, file "
              f"{r['loader_RssFile_bytes'] / n:5.1f}, shared {r['loader_RssShmem_bytes'] / n:5.1f})", flush=True)
        write(Path(args.out), rows)  # after each size: a run cut short keeps the sizes it finished


def sizes_parser(doc: str, folder: str, sizes: list[int], out: str) -> argparse.ArgumentParser:
    """The options of a benchmark that runs each of ``--sizes`` in a fresh process (``--one``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--dir", default=folder)
    parser.add_argument("--sizes", type=int, nargs="+", default=sizes)
    parser.add_argument("--out", default=out)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # run one size in this process
    return parser


def in_fresh_processes(script: str, sizes: list[int], folder: str, *options: str):
    """The row of each size, made by ``script --one <size>`` in a fresh process (its store removed after)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    for n in sizes:
        command = [sys.executable, script, "--one", str(n), "--dir", folder, *options]
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout  # errors go to ours
        shutil.rmtree(Path(folder) / f"s{n}", ignore_errors=True)
        yield json.loads(out.strip().splitlines()[-1])


def write(out: Path, rows: list[dict]) -> None:
    """The rows and the growth of each peak from the first size to the last, as JSON (printed too)."""
    first, last = rows[0], rows[-1]
    growth = {"examples_growth": last["examples"] / first["examples"],
              **{f"fill_{what}_growth": last[f"fill_{what}_bytes"] / max(first[f"fill_{what}_bytes"], 1)
                 for what in ("hwm", "peak", *(f"{f}_peak" for f in KINDS))}}
    if len(rows) > 1:
        print(f"from {first['examples']:,} to {last['examples']:,} examples ({growth['examples_growth']:.0f}x), "
              f"fill's peak RSS (VmHWM) x{growth['fill_hwm_growth']:.3f}; above its RSS before "
              f"x{growth['fill_peak_growth']:.2f} (anonymous x{growth['fill_RssAnon_peak_growth']:.2f}, file "
              f"x{growth['fill_RssFile_peak_growth']:.2f}, shared x{growth['fill_RssShmem_peak_growth']:.2f})")
    out.write_text(json.dumps({"meta": meta(), "rows": rows, **growth}, indent=1))


if __name__ == "__main__":
    main()
