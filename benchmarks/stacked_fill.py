"""A sweep's fills from scratch against stacked fills (each level fed by the store of the level below).

    python benchmarks/stacked_fill.py            # the `make demo` configuration: 3,000 Rotten Tomatoes sentences
Writes results/stacked_fill.json (with the environment) and prints the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import transformers

import layer_recycling as lr
from layer_recycling.bench.assets import minilm_path, movie_reviews
from timing import meta, timed


def fills(model, examples: list[dict], levels: list[float], stacked: bool, batch_size: int) -> dict[float, float]:
    """Seconds of each level's fill into a new memory store, stacked on the previous level's or from scratch."""
    seconds, previous = {}, None
    for level in levels:
        rec = lr.recycle(model, at=level)
        _, seconds[level] = timed(lambda: rec.fill(examples, batch_size=batch_size, progress=False,
                                                   start_from=previous if stacked else None))
        previous = rec
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--levels", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--rounds", type=int, default=2, help="alternate the two orders this many times each")
    ap.add_argument("--out", type=Path, default=Path("results/stacked_fill.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()
    tok = transformers.AutoTokenizer.from_pretrained(minilm_path())
    model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2).eval()
    train, _ = movie_reviews("rotten_tomatoes")
    examples = [tok(t, truncation=True, max_length=args.max_length) for t, _ in train[: args.train]]
    levels = [float(x) for x in args.levels.split(",")]
    runs = {"scratch": [], "stacked": []}
    for r in range(args.rounds):
        for name in (("scratch", "stacked") if r % 2 == 0 else ("stacked", "scratch")):
            runs[name].append(fills(model, examples, levels, name == "stacked", 32))
    total = {name: min(sum(run.values()) for run in rs) for name, rs in runs.items()}
    result = {"config": vars(args) | {"out": str(args.out)}, "runs": runs, "total_s": total,
              "ratio": total["stacked"] / total["scratch"], "meta": meta()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print("| level | from scratch s | stacked s |\n|---|---|---|")
    best = {name: min(rs, key=lambda run: sum(run.values())) for name, rs in runs.items()}
    for level in levels:
        print(f"| {level:.0%} | {best['scratch'][level]:.1f} | {best['stacked'][level]:.1f} |")
    print(f"| all | {total['scratch']:.1f} | {total['stacked']:.1f} |\nstacked / scratch = {result['ratio']:.2f}")


if __name__ == "__main__":
    main()
