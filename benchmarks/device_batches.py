"""What a loader bound for an accelerator does on the host per batch, per codec: before, every codec was decoded
to float32 in the workers; now the stored bytes cross and the device converts them.

    python benchmarks/device_batches.py                 # 512 entries of 128 x 384 (MiniLM's states), batch 32

For each codec: the host time to read and collate a batch decoded to float32 (``get_many``, what a CPU loader
does) against the same batch as stored (``get_stored``, what ``rec.loader(..., device=...)`` sends), and the bytes
that cross to the device. Medians of interleaved rounds; writes one JSON result with the machine and versions.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

import layer_recycling as lr
from layer_recycling.batches import collate_states
from timing import seconds, write_result

CODECS = ["float32", "float16", "bfloat16", "int8"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("results/device_batches.json"))
    args = ap.parse_args(argv)
    keys = [lr.digest(("entry", i)) for i in range(args.entries)]
    batches = [keys[i : i + args.batch] for i in range(0, len(keys), args.batch)]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for codec in CODECS:
            store = lr.DiskStore(Path(folder) / codec, codec=codec)
            g = torch.Generator().manual_seed(0)
            store.put_many(keys, [torch.randn(args.tokens, args.hidden, generator=g) for _ in keys])
            store.flush()
            ways = {"decoded_on_host": lambda: [collate_states(store.get_many(b, dtype=torch.float32), True)
                                                for b in batches],
                    "as_stored": lambda: [collate_states(store.get_stored(b), True) for b in batches]}
            times: dict[str, list[float]] = {k: [] for k in ways}
            for r in range(args.rounds + 1):  # round 0 warms the page cache
                for k in (list(ways) if r % 2 else list(reversed(ways))):
                    t = seconds(ways[k])
                    if r:
                        times[k].append(t / len(batches))
            sent = collate_states(store.get_stored(batches[0]), True)
            results[codec] = {
                **{f"{k}_ms": statistics.median(v) * 1e3 for k, v in times.items()},
                "decoded_mib": sent["states"].numel() * 4 / 2**20,
                "crossing_mib": sum(v.numel() * v.element_size() for k, v in sent.items()
                                    if k != "attention_mask") / 2**20,
            }
    print(f"batch {args.batch} x {args.tokens} x {args.hidden}, medians of {args.rounds} rounds, per batch:\n")
    print("| codec | host ms, decoded to float32 | host ms, as stored | MiB decoded | MiB crossing |")
    print("|---|---|---|---|---|")
    for codec, r in results.items():
        print(f"| {codec} | {r['decoded_on_host_ms']:.2f} | {r['as_stored_ms']:.2f} | {r['decoded_mib']:.2f} | "
              f"{r['crossing_mib']:.2f} |")
    out = write_result(args.out, args, results)
    print(f"\nwrote {args.out}")
    return out


if __name__ == "__main__":
    main()
