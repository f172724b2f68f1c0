"""DataLoader workers over a built loader: what each worker holds per example, under fork and under spawn.

    PYTHONPATH=src:benchmarks python benchmarks/loader_workers.py --dir /tmp/lr-workers --sizes 100000 1000000

Each size runs in a fresh process: ``fill_scale``'s tiny BERT, examples and float16 DiskStore, filled, then
``rec.loader`` (shuffled, batches of 256) iterated with ``num_workers=2`` under each start method. Each worker's
memory is read from ``/proc/<pid>`` after its first batch and again after ``--batches`` batches: USS (pages only it
maps), PSS (shared pages split between their processes), and its anonymous and shared (RssShmem: the columns) RSS.
Then, per worker, the growth of each from the smallest size to the largest, per added example. Writes JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

from fill_scale import examples, in_fresh_processes, recycled, sizes_parser
from timing import meta

CONTEXTS = ("fork", "spawn")


def worker_memory(pid: int) -> dict[str, int]:
    """USS, PSS, RssAnon and RssShmem of process ``pid``, in bytes."""
    rollup = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        rollup[name] = int(value.split()[0]) * 1024
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "RssShmem"):
            status[name] = int(value.split()[0]) * 1024
    return {"uss": rollup["Private_Clean"] + rollup["Private_Dirty"], "pss": rollup["Pss"], **status}


def iterate(loader, batches: int) -> dict[str, list[dict[str, int]]]:
    """Each worker's memory after the first batch and after ``batches`` batches."""
    it = iter(loader)
    next(it)
    pids = [w.pid for w in it._workers]  # noqa: SLF001 - the only handle on the worker processes
    first = [worker_memory(p) for p in pids]
    for _ in range(batches - 1):
        next(it)
    last = [worker_memory(p) for p in pids]
    del it
    return {"first": first, "last": last}


def one(n: int, folder: str, batches: int) -> dict:
    rec = recycled(n, folder)
    rec.fill(examples(n), batch_size=1024, progress=False)
    out = {"examples": n}
    for context in CONTEXTS:
        loader = rec.loader(examples(n), batch_size=256, shuffle=True, progress=False, num_workers=2,
                            multiprocessing_context=context)
        out[context] = iterate(loader, batches)
    return out


def per_example(rows: list[dict]) -> dict:
    """Per start method, moment and measure: the mean worker's growth from the first size to the last, per added
    example."""
    first, last = rows[0], rows[-1]
    added = last["examples"] - first["examples"]
    out = {}
    for context in CONTEXTS:
        for when in ("first", "last"):
            for what in first[context][when][0]:
                mean = [sum(w[what] for w in r[context][when]) / len(r[context][when]) for r in (first, last)]
                out[f"{context}_{when}_{what}_per_example"] = (mean[1] - mean[0]) / added
    return out


def main() -> None:
    parser = sizes_parser(__doc__, "/tmp/lr-workers", [100_000, 1_000_000], "benchmarks/loader_workers.json")
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.dir, args.batches)))
        return
    rows = []
    for row in in_fresh_processes(__file__, args.sizes, args.dir, "--batches", str(args.batches)):
        rows.append(row)
        n = row["examples"]
        for context in CONTEXTS:
            worker = row[context]["last"]
            print(f"{n:>10,} examples, {context:>5}: per worker after {args.batches} batches (MiB) " + "; ".join(
                f"USS {w['uss'] / 2**20:.1f}, PSS {w['pss'] / 2**20:.1f}, anonymous {w['RssAnon'] / 2**20:.1f}, "
                f"shared {w['RssShmem'] / 2**20:.1f}" for w in worker), flush=True)
    growth = per_example(rows) if len(rows) > 1 else {}
    for name, value in growth.items():
        print(f"{name}: {value:.2f} B")
    Path(args.out).write_text(json.dumps({"meta": meta(), "batches": args.batches, "rows": rows, **growth}, indent=1))


if __name__ == "__main__":
    main()
