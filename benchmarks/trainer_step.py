"""HF Trainer on a recycled model against the same Trainer on the whole model, beside the plain loop's ratio.

    python benchmarks/trainer_step.py --train 512 --epochs 2     # all-MiniLM-L6-v2, Rotten Tomatoes, at=0.5
Trainer time per epoch: recycled (batches from the store) vs the un-recycled model (padded model inputs);
the plain loop (`bench.runner.train_epochs`) on the same data gives the ratio to match. Writes JSON, prints both.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import torch
import transformers as T

import layer_recycling as lr
from layer_recycling.bench.assets import minilm_path, movie_reviews
from layer_recycling.bench.runner import train_epochs
from layer_recycling.bench.runner import input_loader
from timing import meta, timed


def _model():
    torch.manual_seed(0)
    return T.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)


def _trainer_epoch_s(model, dataset, collate, epochs: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        args = T.TrainingArguments(out, num_train_epochs=epochs, per_device_train_batch_size=batch, report_to=[],
                                   save_strategy="no", use_cpu=True, disable_tqdm=True, logging_strategy="no")
        trainer = T.Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
        _, seconds = timed(trainer.train)
    return seconds / epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("results/trainer_step.json"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    T.logging.set_verbosity_error()
    tok = T.AutoTokenizer.from_pretrained(minilm_path())
    train, _ = movie_reviews("rotten_tomatoes")
    examples = [{**tok(t, truncation=True, max_length=args.max_length), "label": y} for t, y in train[: args.train]]
    b, e = args.batch_size, args.epochs
    full = _model()
    plain = input_loader(full, examples, batch_size=b, shuffle=True, seed=0).dataset
    rec = lr.recycle(_model(), at=0.5)
    cached = rec.dataset(examples, progress=False)
    result = {
        "trainer_full_s": _trainer_epoch_s(full, plain, plain.collate, e, b),
        "trainer_recycled_s": _trainer_epoch_s(rec, cached, cached.collate, e, b),
    }
    full2, rec2 = _model(), lr.recycle(_model(), at=0.5)
    loops = {"loop_full_s": (full2, input_loader(full2, examples, batch_size=b, shuffle=True, seed=0)),
             "loop_recycled_s": (rec2, rec2.loader(examples, batch_size=b, shuffle=True, seed=0, progress=False))}
    for name, (model, loader) in loops.items():
        params = [p for p in model.parameters() if p.requires_grad]
        result[name] = sum(train_epochs(model, loader, params, 5e-5, e, name)) / e
    result["trainer_ratio"] = result["trainer_full_s"] / result["trainer_recycled_s"]
    result["loop_ratio"] = result["loop_full_s"] / result["loop_recycled_s"]
    result["trainer_vs_loop"] = result["trainer_ratio"] / result["loop_ratio"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, **result,
                                    "meta": meta()}, indent=2))
    for k, v in result.items():
        print(f"{k:>20}: {v:.3f}")


if __name__ == "__main__":
    main()
