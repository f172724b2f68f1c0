"""Train the recycled top with Hugging Face accelerate (one device, or many under `accelerate launch`).

    python examples/accelerate_train.py                 # all-MiniLM-L6-v2 on 2,000 Rotten Tomatoes sentences
    python examples/accelerate_train.py --model tiny    # a random 4-block BERT, seconds
"""

from __future__ import annotations

import argparse

import torch
from accelerate import Accelerator

import layer_recycling as lr
from ddp import model_and_examples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm", choices=["minilm", "tiny"])
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    accelerator = Accelerator()
    model, examples = model_and_examples(args.model, args.examples)
    rec = lr.recycle(model, at=0.5)
    # Fills once; under `accelerate launch` each process reads its own share of every epoch already, so the
    # loader is not prepared (accelerate would shard it a second time); batches arrive on this process's device.
    loader = rec.loader(examples, batch_size=32, shuffle=True, group_by_length=True, seed=0,
                        device=accelerator.device)
    calls = rec.stats.bottom_calls
    opt = torch.optim.AdamW([p for p in rec.parameters() if p.requires_grad], lr=5e-5)
    rec, opt = accelerator.prepare(rec, opt)
    for epoch in range(args.epochs):
        loader.batch_sampler.set_epoch(epoch)
        total = 0.0
        for batch in loader:
            loss = rec(**batch).loss
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad()
            total += loss.item()
        accelerator.print(f"epoch {epoch + 1}: loss {total / len(loader):.3f}")
    unwrapped = accelerator.unwrap_model(rec)
    accelerator.print(f"the bottom ran {unwrapped.stats.bottom_calls - calls} times after the fill")


if __name__ == "__main__":
    main()
