"""End-to-end demo: all-MiniLM-L6-v2 on Rotten Tomatoes with its bottom half recycled.

Fills the cache once, trains the top for a few epochs from the cache (the bottom never runs again), then
serves the test set: first as misses (the bottom runs), then as hits (only the top runs).
    python examples/demo.py --train 4000 --test 1000 --epochs 3
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers

import layer_recycling as lr
from layer_recycling.bench.assets import minilm_path, movie_reviews
from layer_recycling.bench.runner import train_epochs


def accuracy(rec: lr.Recycled, tok, data: list[tuple[str, int]], batch_size: int = 64) -> tuple[float, float]:
    """(accuracy, seconds) of ``rec`` served on ``data``."""
    correct, start = 0, time.perf_counter()
    rec.eval()
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            texts, labels = zip(*data[i : i + batch_size])
            batch = tok(list(texts), padding=True, truncation=True, max_length=64, return_tensors="pt")
            correct += int((rec(**batch).logits.argmax(-1) == torch.tensor(labels)).sum())
    return correct / len(data), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--at", type=float, default=0.5)
    args = ap.parse_args()
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()

    tok = transformers.AutoTokenizer.from_pretrained(minilm_path())
    model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    train, test = movie_reviews("rotten_tomatoes")
    train, test = train[: args.train], test[: args.test]
    call = dict(truncation=True, max_length=64)
    examples = [{**tok(text, **call), "label": label} for text, label in train]

    rec = lr.recycle(model, at=args.at, tokenizer=tok, preprocess=call)
    print(f"recycling {rec.at} of {rec.num_layers} blocks of all-MiniLM-L6-v2; fingerprint {rec.fingerprint.digest[:12]}")
    start = time.perf_counter()
    loader = rec.loader(examples, batch_size=32, shuffle=True, group_by_length=True, seed=0)  # fills once
    print(f"fill: {len(rec.store)} entries in {time.perf_counter() - start:.1f} s")

    trainable = [p for p in rec.parameters() if p.requires_grad]
    seconds = train_epochs(rec, loader, trainable, lr=5e-5, epochs=args.epochs, label="recycled")
    print(f"{args.epochs} epochs: {', '.join(f'{s:.1f} s' for s in seconds)}; the bottom ran on "
          f"{rec.stats.bottom_calls} batches, all in the fill")

    acc, cold = accuracy(rec, tok, test)
    _, warm = accuracy(rec, tok, test)
    print(f"test accuracy {acc:.3f} on {len(test)} reviews; serving {cold:.1f} s as misses, {warm:.1f} s as hits "
          f"({cold / warm:.2f}x)")
    print(f"stats: {rec.stats}")


if __name__ == "__main__":
    main()
