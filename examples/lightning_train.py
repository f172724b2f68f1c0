"""Train the recycled top with Lightning 2: the LightningModule wraps the recycled model, batches come from the store.

    python examples/lightning_train.py                 # all-MiniLM-L6-v2 on 2,000 Rotten Tomatoes sentences
    python examples/lightning_train.py --model tiny    # a random 4-block BERT, seconds
"""

from __future__ import annotations

import argparse
import warnings

import lightning as L
import torch

import layer_recycling as lr
from ddp import model_and_examples

# The recycled bottom runs in eval mode by design (its stored states stand for every epoch); Lightning notes
# modules left in eval mode at the start of training: that note is about the bottom, and expected.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")


class RecycledModule(L.LightningModule):
    def __init__(self, rec: lr.Recycled, lr_: float = 5e-5):
        super().__init__()
        self.rec, self.lr_ = rec, lr_

    def training_step(self, batch, _):
        loss = self.rec(**batch).loss
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.rec.parameters() if p.requires_grad], lr=self.lr_)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm", choices=["minilm", "tiny"])
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    model, examples = model_and_examples(args.model, args.examples)
    rec = lr.recycle(model, at=0.5)
    loader = rec.loader(examples, batch_size=32, shuffle=True, group_by_length=True, seed=0)  # fills once
    calls = rec.stats.bottom_calls
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False)
    trainer.fit(RecycledModule(rec), loader)
    print(f"trained {args.epochs} epochs; loss {float(trainer.callback_metrics['loss']):.3f}; "
          f"the bottom ran {rec.stats.bottom_calls - calls} times after the fill")


if __name__ == "__main__":
    main()
