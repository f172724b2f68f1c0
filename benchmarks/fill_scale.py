"""A fill and a loader at 100k, 1M and 10M examples: peak memory per example, and how it grows with the count.

    PYTHONPATH=src python benchmarks/fill_scale.py --dir /tmp/lr-fill-scale --sizes 100000 1000000 10000000

Each size runs in a fresh process: a tiny BERT (hidden 8, one block recycled, so that the model's own memory and
time do not count), short examples of 3 token ids made on the fly by a generator (the source costs nothing: what
grows is the library's), a float16 DiskStore. Reported per size: the process's peak RSS over the fill above its
RSS before it (VmHWM: file-backed pages of the store's index included) and its peak anonymous memory (sampled
every 20 ms), and the RSS a built loader adds (`rec.loader` over the same generator, all hits: keys, lengths and
labels), anonymous, file-backed and shared apart, each also per example; then the growth from the smallest to the
largest size. Writes JSON.
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


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM, RssAnon, RssFile)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class AnonPeak:
    """The largest RssAnon seen while it runs (sampled every 20 ms): VmHWM counts file-backed pages too."""

    def __enter__(self):
        self.peak, self._stop = _status("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _status("RssAnon"))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here on


def examples(n: int):
    """``n`` distinct examples of 3 token ids and a class label, made as they are read."""
    for i in range(n):
        yield {"input_ids": [1 + i % 97, 1 + i // 97 % 97, 1 + i // 9409 % 97 + 97 * (i // 912673)], "label": i % 2}


def one(n: int, folder: str) -> dict:
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
    _reset_peak()
    before, anon, start = _status("VmRSS"), _status("RssAnon"), time.perf_counter()
    with AnonPeak() as sampled:
        added = rec.fill(examples(n), batch_size=1024, progress=False)
    fill_s, fill_peak = time.perf_counter() - start, _status("VmHWM") - before
    fill_anon_peak = sampled.peak - anon
    _reset_peak()
    before = {f: _status(f) for f in PARTS}
    loader = rec.loader(examples(n), batch_size=256, shuffle=True, progress=False)
    grew = {f: _status(f) - before[f] for f in PARTS}
    loader_rss, loader_peak = grew["VmRSS"], _status("VmHWM") - before["VmRSS"]
    counts = (n, len(loader.dataset), added, rec.stats.bottom_examples)
    assert counts[1] == n and counts[3] == 2000 + added, f"examples, loader, added, bottom runs: {counts}"
    return {"examples": n, "added": added, "fill_s": fill_s, "fill_peak_bytes": fill_peak,
            "fill_peak_per_example": fill_peak / n, "fill_anon_peak_bytes": fill_anon_peak, "loader_bytes": loader_rss,
            "loader_per_example": loader_rss / n,
            "loader_build_peak_bytes": loader_peak, "store_bytes": rec.store.volume(),
            **{f"loader_{f}_bytes": grew[f] for f in PARTS[1:]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/lr-fill-scale")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--out", default="benchmarks/fill_scale.json")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # run one size in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.dir)))
        return
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--dir", args.dir], check=True,
                             stdout=subprocess.PIPE, text=True).stdout  # its errors go to ours
        rows.append(json.loads(out.strip().splitlines()[-1]))
        shutil.rmtree(Path(args.dir) / f"s{n}", ignore_errors=True)
        r = rows[-1]
        print(f"{n:>10,} examples: fill {r['fill_s']:7.1f} s, peak +{r['fill_peak_bytes'] / 2**20:7.1f} MiB "
              f"({r['fill_peak_per_example']:6.1f} B/ex; anonymous +{r['fill_anon_peak_bytes'] / 2**20:6.1f} MiB); "
              f"loader +{r['loader_bytes'] / 2**20:6.1f} MiB "
              f"({r['loader_per_example']:5.1f} B/ex: anonymous {r['loader_RssAnon_bytes'] / n:5.1f}, file "
              f"{r['loader_RssFile_bytes'] / n:5.1f}, shared {r['loader_RssShmem_bytes'] / n:5.1f})", flush=True)
    first, last = rows[0], rows[-1]
    growth = {"fill_peak_growth": last["fill_peak_bytes"] / max(first["fill_peak_bytes"], 1),
              "examples_growth": last["examples"] / first["examples"]}
    print(f"from {first['examples']:,} to {last['examples']:,} examples ({growth['examples_growth']:.0f}x): "
          f"fill's peak grew {growth['fill_peak_growth']:.2f}x")
    Path(args.out).write_text(json.dumps({"meta": meta(), "rows": rows, **growth}, indent=1))


if __name__ == "__main__":
    main()
