"""One prepared check of recycling on an accelerator: step, fill and serving speed as ratios, in one run.

    python benchmarks/gpu_check.py                  # on a GPU: MiniLM and the 12-block MPNet (make bench-assets)
    python benchmarks/gpu_check.py --smoke          # anywhere: tiny random models, seconds (the test runs this)

For each model and level, on batches of ``--batch`` x ``--tokens``: (a) a full fine-tuning step, (b) the frozen
bottom without a cache (``store=None``), (c) the recycled step with batches from a DiskStore through
``rec.loader(..., device=...)`` (float16, int8 and float32 stores; each crosses to the device as stored and is
converted there), (d) the top alone on states already on the device;
the fill against the bare bottom's forward on the same batches; inference on all-hit batches against the full
forward; peak device memory per setting. Rounds interleave the settings; medians are reported; the table is
printed and the JSON written. Targets on a GPU: (c)/(d) <= 1.10 (float16), (a)/(c) >= 2.0 at 50% for MPNet,
fill >= 0.9x the bare bottom, all-hit inference >= 1.8x the full forward at 50%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import transformers as T

import layer_recycling as lr
from timing import meta

CODECS = ("float16", "int8", "float32")  # the first is timed for the fill and used for (d) and serving


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak device memory of one call (None off CUDA, where torch does not count it)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    return torch.cuda.max_memory_allocated(device) / 2**20


def models(smoke: bool) -> dict[str, Callable[[], torch.nn.Module]]:
    """{name: a fresh sequence classifier} (same weights every call)."""
    if smoke:
        def tiny(layers: int) -> Callable[[], torch.nn.Module]:
            config = T.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                                  intermediate_size=37, max_position_embeddings=64, num_labels=2)
            return lambda: (torch.manual_seed(0), T.BertForSequenceClassification(config))[1]
        return {"tiny-4": tiny(4)}
    from layer_recycling.bench.assets import minilm_path, mpnet_path

    def load(path: Path) -> Callable[[], torch.nn.Module]:
        return lambda: (torch.manual_seed(0), T.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2))[1]
    return {"minilm": load(minilm_path()), "mpnet": load(mpnet_path())}


def examples(n: int, tokens: int, vocab: int, seed: int = 0) -> list[dict]:
    """Random token ids of ``tokens`` each (the speed question does not need real text), labels 0/1."""
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": [101, *torch.randint(1000 % vocab, vocab, (tokens - 2,), generator=g).tolist(), 102],
             "label": i % 2} for i in range(n)]


def padded(rows: list[dict], device: torch.device) -> dict[str, torch.Tensor]:
    ids = torch.tensor([r["input_ids"] for r in rows], device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.tensor([r["label"] for r in rows], device=device)}


def check(name: str, make: Callable[[], torch.nn.Module], at: float, args, device: torch.device, folder: Path) -> dict:
    vocab = make().config.vocab_size
    data = examples(args.batch * args.batches, args.tokens, vocab)
    batches = [padded(data[i : i + args.batch], device) for i in range(0, len(data), args.batch)]
    full = make().to(device).train()
    frozen = lr.recycle(make().to(device), at=at, store=None).train()
    recs = {codec: lr.recycle(make().to(device), at=at, store=lr.DiskStore(folder / f"{name}-{at}-{codec}",
                                                                           codec=codec)).train()
            for codec in CODECS}

    # the fill against the bare bottom's forward on the same batches
    bare = lr.recycle(make().to(device), at=at, store=None).eval()
    bottom_s = timed(lambda: [bare.pipeline.run_bottom({k: v for k, v in b.items() if k != "labels"})
                              for b in batches], device)
    fill_s = timed(lambda: recs["float16"].fill(data, batch_size=args.batch, progress=False), device)
    for other in CODECS[1:]:
        recs[other].fill(data, batch_size=args.batch, progress=False)

    loaders = {c: r.loader(data, batch_size=args.batch, shuffle=True, seed=0, progress=False, device=device)
               for c, r in recs.items()}
    streams = {c: iter(()) for c in loaders}

    def next_batch(codec: str) -> dict:
        batch = next(streams[codec], None)
        if batch is None:
            streams[codec] = iter(loaders[codec])
            batch = next(streams[codec])
        return batch

    cached = next(iter(loaders["float16"]))
    rec = recs["float16"]

    def step(forward: Callable[[], torch.Tensor], params: list) -> Callable[[], None]:
        opt = torch.optim.AdamW(params, lr=1e-5)

        def run() -> None:
            forward().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    top = lambda r: [p for p in r.parameters() if p.requires_grad]  # noqa: E731
    steps = {
        "a_full": step(lambda: full(**batches[0]).loss, list(full.parameters())),
        "b_frozen_no_cache": step(lambda: frozen(**batches[0]).loss, top(frozen)),
        **{f"c_recycled_{c}": step(lambda c=c: recs[c](**next_batch(c)).loss, top(recs[c])) for c in CODECS},
        "d_top_on_device": step(lambda: rec.top(cached["states"], attention_mask=cached["attention_mask"],
                                                labels=cached["labels"]).loss, top(rec)),
    }
    serving = {"full_forward": lambda: full(**batches[0]), "recycled_all_hits": lambda: rec(**batches[0])}
    memory = {k: peak_mb(fn, device) for k, fn in steps.items()}  # also the warm-up
    times: dict[str, list[float]] = {k: [] for k in [*steps, *serving]}
    calls = sum(r.stats.bottom_calls for r in recs.values())
    for r in range(args.rounds):
        for k in (list(steps) if r % 2 == 0 else list(reversed(steps))):
            times[k].append(timed(steps[k], device))
        full.eval(), rec.eval()
        with torch.no_grad():
            for k, fn in serving.items():
                times[k].append(timed(fn, device))
        full.train(), rec.train()
    assert sum(r.stats.bottom_calls for r in recs.values()) == calls, "a recycled step ran the bottom"
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": name, "at": at, "blocks": rec.at, "of": rec.num_layers, "median_s": med, "peak_mb": memory,
        "fill_s": fill_s, "bare_bottom_s": bottom_s,
        "ratios": {
            "a_over_c16": med["a_full"] / med["c_recycled_float16"],
            "b_over_c16": med["b_frozen_no_cache"] / med["c_recycled_float16"],
            "c16_over_d": med["c_recycled_float16"] / med["d_top_on_device"],
            "c8_over_d": med["c_recycled_int8"] / med["d_top_on_device"],
            "c32_over_d": med["c_recycled_float32"] / med["d_top_on_device"],
            "fill_rate_vs_bare_bottom": bottom_s / fill_s,
            "inference_full_over_hits": med["full_forward"] / med["recycled_all_hits"],
        },
    }


def table(results: list[dict]) -> str:
    cols = ["a_over_c16", "b_over_c16", "c16_over_d", "c8_over_d", "c32_over_d", "fill_rate_vs_bare_bottom",
            "inference_full_over_hits"]
    lines = ["| model | level | " + " | ".join(cols) + " | peak MB (a / c16) |", "|---" * (len(cols) + 3) + "|"]
    for r in results:
        mem = r["peak_mb"]
        peak = "-" if mem["a_full"] is None else f"{mem['a_full']:.0f} / {mem['c_recycled_float16']:.0f}"
        lines.append(f"| {r['model']} | {r['blocks']}/{r['of']} | "
                     + " | ".join(f"{r['ratios'][c]:.2f}" for c in cols) + f" | {peak} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny random models and sizes: runs anywhere in seconds")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--batches", type=int, default=8, help="distinct batches filled and trained from")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.75])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("results/gpu_check.json"))
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch, args.tokens, args.batches, args.rounds, args.levels = 4, 16, 2, 1, args.levels[:1]
    device = torch.device(args.device)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name, make in models(args.smoke).items():
            for at in args.levels:
                results.append(check(name, make, at, args, device, Path(folder)))
                print(f"{name} at {at}: " + ", ".join(f"{k} {v:.2f}" for k, v in results[-1]["ratios"].items()),
                      flush=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = {"config": {k: str(v) for k, v in vars(args).items()}, "device": device_name, "results": results,
           "meta": meta()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\n{device_name}, batch {args.batch} x {args.tokens} tokens, medians of {args.rounds} rounds\n")
    print(table(results))
    print(f"\nwrote {args.out}")
    return out


if __name__ == "__main__":
    main()
