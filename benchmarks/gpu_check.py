"""One prepared check of recycling on an accelerator: step, fill and serving speed as ratios, in one run.

    PYTHONPATH=src python benchmarks/gpu_check.py     # on a GPU: MiniLM and the 12-block MPNet, at most 8 minutes
    PYTHONPATH=src python benchmarks/gpu_check.py --smoke   # anywhere: both configs shrunk, seconds (a test runs it)

It needs torch, transformers, numpy and this repository only. Each model uses its real weights where its package is
installed (`make demo`, `make bench-assets`), else its shapes alone: the config kept in benchmarks/configs/ at random
init (seed 0); step times do not depend on the weights' values. Token ids are random, lengths drawn (seed 0) from
IMDB's length histogram and cut at ``--tokens``. Stores live in a temporary directory.

For each model and level (a part), on batches of ``--batch`` x up to ``--tokens``: (a) a full fine-tuning step, (b)
the frozen bottom without a cache (``store=None``), (c) the recycled step with batches from a DiskStore through
``rec.loader(..., device=...)`` (float16, int8 and float32 stores; each crosses to the device as stored and is
converted there), (d) the top alone on states already on the device; the fill against the bare bottom's forward on
the same batches; inference on all-hit batches against the full forward; peak device memory per setting. Rounds
interleave the settings; medians are reported. Each part gets an equal share of the time left (printed); a part
that spends it stops after the round in progress and says so. After each part its JSON line is appended to
``<out>.jsonl`` and the table so far printed; the full JSON is written at the end. Targets on a GPU: (c)/(d) <= 1.10
(float16), (a)/(c) >= 2.0 at 50% for MPNet, fill >= 0.9x the bare bottom, all-hit inference >= 1.8x the full forward
at 50%.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # before the heavy imports: the budget is the whole process's

import argparse  # noqa: E402
import faulthandler  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads: offline, a bare machine never waits on a hub

import torch  # noqa: E402
import transformers as T  # noqa: E402

from gpu_models import SHAPES, Source, sources  # noqa: E402
from gpu_parts import COLUMNS, OutOfTime, Part  # noqa: E402
from timing import meta  # noqa: E402

GRACE_S = 90  # past the budget, a part stuck inside one call dumps the stacks and exits: the call still returns


class Budget:
    """Seconds for the whole process (imports included) and each part's share of what is left."""

    def __init__(self, total_s: float):
        self.total_s = total_s

    def left(self) -> float:
        return max(self.total_s - (time.monotonic() - STARTED), 0.0)

    def share(self, parts_left: int) -> float:
        return self.left() / parts_left


def table(results: list[dict]) -> str:
    lines = ["| model | weights | level | " + " | ".join(COLUMNS) + " | peak MB (a / c16) | rounds |",
             "|---" * (len(COLUMNS) + 5) + "|"]
    for r in results:
        ratios = r.get("ratios") or {}
        mem = r.get("peak_mb") or {}
        peak = "-" if mem.get("a_full") is None else f"{mem['a_full']:.0f} / {mem['c_recycled_float16']:.0f}"
        rounds = f"{r['rounds']}" + (f" (cut: {r['cut']})" if r["cut"] else "")
        lines.append(f"| {r['model']} | {'shapes' if r['weights'] == SHAPES else 'real'} | {r['blocks']}/{r['of']} | "
                     + " | ".join(f"{ratios[c]:.2f}" if c in ratios else "-" for c in COLUMNS)
                     + f" | {peak} | {rounds} |")
    return "\n".join(lines)


def run_part(source: Source, at: float, args, device: torch.device, seconds: float) -> dict:
    """One model at one level within ``seconds``; its stores live in a temporary directory removed after it."""
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as folder:
        part = Part(source, at, args, device, Path(folder), seconds)
        try:
            part.run()
        except OutOfTime as cut:
            part.cut = str(cut)
        except Exception as err:  # noqa: BLE001 - one failed part (out of memory, say) must not cost the others
            traceback.print_exc()
            part.cut = f"failed: {type(err).__name__}: {err}"
        finally:
            part.close()
        return part.result()


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="both configs shrunk, tiny sizes: runs anywhere in seconds")
    ap.add_argument("--weights", choices=["auto", "real", "shapes"], default="auto",
                    help="auto: real weights where installed, else shapes only; real: refuse without them")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128, help="the longest example (IMDB lengths are cut here)")
    ap.add_argument("--batches", type=int, default=8, help="distinct batches filled and trained from")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.75])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run, imports included")
    ap.add_argument("--out", type=Path, default=Path("results/gpu_check.json"))
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch, args.tokens, args.batches, args.rounds, args.levels = 4, 16, 2, 1, args.levels[:1]
    if not 3 <= args.tokens <= 512:
        ap.error(f"--tokens {args.tokens}: expected 3..512 (both models' positions end at 512 tokens)")
    return args


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def header(args, device: torch.device, chosen: list[Source]) -> str:
    lines = [f"gpu_check on {device_name(device)}: torch {torch.__version__}, transformers {T.__version__}; batch "
             f"{args.batch} x up to {args.tokens} tokens (IMDB lengths, seed 0), {args.batches} batches, up to "
             f"{args.rounds} rounds; budget {args.budget:.0f} s, {time.monotonic() - STARTED:.0f} s spent importing"]
    return "\n".join(lines + [s.describe() for s in chosen])


def run_all(plan: list[tuple[Source, float]], args, device: torch.device, budget: Budget, lines: Path) -> list[dict]:
    """The parts in turn, each in its share of the time left; its JSON line and the table so far as each ends."""
    results = []
    for i, (source, at) in enumerate(plan):
        seconds = budget.share(len(plan) - i)
        print(f"\n[{i + 1}/{len(plan)}] {source.name} at {at}: budget {seconds:.0f} s of {budget.left():.0f} s left",
              flush=True)
        results.append(run_part(source, at, args, device, seconds))
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        with lines.open("a") as f:
            f.write(json.dumps(results[-1]) + "\n")
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in results[-1].get("phases_s", {}).items())
        print(f"done in {results[-1]['spent_s']:.1f} s ({phases})\n{table(results)}", flush=True)
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    T.logging.set_verbosity_error()  # the new classifier head's notice on real weights is expected
    device, budget = torch.device(args.device), Budget(args.budget)
    chosen = sources(args.weights, args.smoke)
    print(header(args, device, chosen), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lines = args.out.with_suffix(".jsonl")
    lines.write_text("")
    faulthandler.dump_traceback_later(budget.left() + GRACE_S, exit=True, file=sys.__stderr__)
    try:
        results = run_all([(source, at) for source in chosen for at in args.levels], args, device, budget, lines)
    finally:
        faulthandler.cancel_dump_traceback_later()
    out = {"config": {k: str(v) for k, v in vars(args).items()}, "device": device_name(device),
           "sources": [s.describe() for s in chosen], "results": results, "meta": meta(),
           "total_s": time.monotonic() - STARTED}
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\nall parts in {out['total_s']:.0f} s (budget {args.budget:.0f} s); wrote {args.out} and {lines}")
    return out


if __name__ == "__main__":
    main()
