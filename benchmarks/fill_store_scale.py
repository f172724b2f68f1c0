"""The store's side of a fill at 1M and 10M entries: what a fill does to a DiskStore, without a model or examples.

    PYTHONPATH=src:benchmarks python benchmarks/fill_store_scale.py --dir /tmp/lr-fill-store --sizes 1000000 10000000

``fill_scale.py`` runs the whole fill (keying, the model, the store) and costs about 30 us an example; this runs only
what a fill asks of its store, chunk by chunk as ``fill.stream`` does, at a few us an entry, so that 10M entries fit
in minutes: ``contains_many`` of a chunk of 4,096 new keys (digests), then ``put_many`` of their float16 states of 3
tokens x 8 (the tiny BERT's), then ``flush``. The store commits a segment every 65,536 entries and merges itself
past 64 unmerged segments, as in a fill. Reported per size, each in a fresh process: the peak RSS (VmHWM), and the
peaks of anonymous, file-backed and shared memory above theirs before (sampled every 20 ms), and the growth of each
from the smallest size to the largest. Writes JSON.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from fill_scale import KINDS, Peaks, _reset_peak, _status, in_fresh_processes, sizes_parser
from timing import meta

CHUNK = 4096  # fill.CHUNK


def keys_of(lo: int, hi: int) -> list[str]:
    return [hashlib.blake2b(i.to_bytes(8, "little"), digest_size=20).hexdigest() for i in range(lo, hi)]


def one(n: int, folder: str) -> dict:
    import torch
    import layer_recycling as lr

    store = lr.DiskStore(Path(folder) / f"s{n}", codec="float16")
    states = list(torch.randn(CHUNK, 3, 8).unbind(0))
    _reset_peak()
    before, kinds, start = _status("VmRSS"), {f: _status(f) for f in KINDS}, time.perf_counter()
    with Peaks() as sampled:
        for lo in range(0, n, CHUNK):
            keys = keys_of(lo, min(n, lo + CHUNK))
            assert not store.contains_many(keys).any()
            store.put_many(keys, states[: len(keys)])
        store.flush()
    seconds, hwm = time.perf_counter() - start, _status("VmHWM")
    assert store.contains_many(keys_of(n - 10, n)).all()
    return {"examples": n, "fill_s": seconds, "fill_hwm_bytes": hwm, "fill_peak_bytes": hwm - before,
            **{f"fill_{f}_peak_bytes": sampled.peak[f] - kinds[f] for f in KINDS}, "info": store.info()}


def main() -> None:
    parser = sizes_parser(__doc__, "/tmp/lr-fill-store", [1_000_000, 10_000_000], "benchmarks/fill_store_scale.json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.dir), default=str))
        return
    rows = []
    for r in in_fresh_processes(__file__, args.sizes, args.dir):
        rows.append(r)
        print(f"{r['examples']:>10,} entries: {r['fill_s']:6.1f} s, peak RSS {r['fill_hwm_bytes'] / 2**20:7.1f} MiB, "
              f"+{r['fill_peak_bytes'] / 2**20:6.1f} MiB; peaks: anonymous +{r['fill_RssAnon_peak_bytes'] / 2**20:6.1f}, "
              f"file +{r['fill_RssFile_peak_bytes'] / 2**20:6.1f}, shared +{r['fill_RssShmem_peak_bytes'] / 2**20:5.1f} "
              f"MiB", flush=True)
        first = rows[0]
        growth = {f"{k}_growth": r[k] / max(first[k], 1) for k in r if k.endswith("_bytes")}
        Path(args.out).write_text(json.dumps({"meta": meta(), "rows": rows, **growth}, indent=1, default=str))
    print(json.dumps(growth, indent=1))


if __name__ == "__main__":
    main()
