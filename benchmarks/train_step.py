"""Training-step and inference speed of recycling against its baselines, in one process, as ratios.

    python benchmarks/train_step.py --at 0.5 --batch 32 --tokens 128 --rounds 6

Settings, one training step each (forward, backward, AdamW step) on the same batch of IMDB reviews cut to
``--tokens`` tokens with all-MiniLM-L6-v2: (a) full fine-tuning, (b) frozen bottom without cache
(``store=None``), (c) recycled: a batch from ``rec.loader`` (store read, re-pad, mask) then the top,
(d) the top alone on a padded tensor already in RAM. Rounds interleave the settings, in alternating order,
so drift and warm-cache effects hit all alike; medians are reported. Inference compares the full model with all-hit batches served through the store.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import transformers

import layer_recycling as lr
from layer_recycling.bench.assets import minilm_path, movie_reviews
from timing import meta, seconds


def _step(fn, params):
    opt = torch.optim.AdamW(params, lr=1e-5)

    def run():
        loss = fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--at", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/train_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    path = str(minilm_path())
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    train, _ = movie_reviews("imdb")
    texts, labels = [t for t, _ in train[: args.batch]], [y for _, y in train[: args.batch]]
    call = dict(truncation=True, max_length=args.tokens)
    examples = [{**tok(t, **call), "labels": y} for t, y in zip(texts, labels)]
    batch = dict(tok(texts, padding="max_length", return_tensors="pt", **call))
    batch["labels"] = torch.tensor(labels)
    print(f"batch {args.batch} x {batch['input_ids'].shape[1]} tokens "
          f"({int(batch['attention_mask'].sum())} real), at={args.at}, {torch.get_num_threads()} threads")

    frozen = lr.recycle(model, at=args.at, store=None, tokenizer=tok, preprocess=call)
    rec = lr.recycle(model, at=args.at, tokenizer=tok, preprocess=call)
    top_params = [p for p in rec.parameters() if p.requires_grad]
    loader = rec.loader(examples, batch_size=args.batch, shuffle=True, progress=False)
    cached = next(iter(loader))
    model.train(), frozen.train(), rec.train()

    # (a) full fine-tuning needs every parameter trainable: a separate model with the same weights.
    full_model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).train()
    steps = {
        "a_full": _step(lambda: full_model(**batch).loss, list(full_model.parameters())),
        "b_frozen_no_cache": _step(lambda: frozen(**batch).loss, top_params),
        "c_recycled": _step(lambda: rec(**next(iter(loader))).loss, top_params),
        "d_top_in_ram": _step(lambda: rec.top(cached["states"], attention_mask=cached["attention_mask"],
                                              labels=cached["labels"]).loss, top_params),
    }
    rec.eval(), full_model.eval()
    serve = {
        "full_forward": lambda: full_model(**batch),
        "recycled_all_hits": lambda: rec(**batch),
    }
    times: dict[str, list[float]] = {k: [] for k in [*steps, *serve]}
    for fn in [*steps.values()]:
        fn()  # warm-up
    calls = rec.stats.bottom_calls
    for r in range(args.rounds):
        # Alternate the order each round: the step after another setting's is slower (caches, allocator).
        for name in (list(steps) if r % 2 == 0 else list(reversed(steps))):
            times[name].append(seconds(steps[name]))
        with torch.no_grad():
            for name, fn in serve.items():
                times[name].append(seconds(fn))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items()))
    assert rec.stats.bottom_calls == calls, "the recycled step ran the bottom"

    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {
        "full_over_recycled": med["a_full"] / med["c_recycled"],
        "frozen_over_recycled": med["b_frozen_no_cache"] / med["c_recycled"],
        "recycled_over_top_in_ram": med["c_recycled"] / med["d_top_in_ram"],
        "inference_full_over_hits": med["full_forward"] / med["recycled_all_hits"],
    }
    result = {"config": vars(args) | {"out": str(args.out)}, "median_s": med, "all_s": times, "ratios": ratios,
              "meta": meta()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("\nmedian per step: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in med.items()))
    for k, v in ratios.items():
        print(f"{k:>28}: {v:.2f}x")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
