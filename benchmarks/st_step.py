"""A SentenceTransformerTrainer epoch with all-MiniLM-L6-v2 recycled at 50% against the same trainer unrecycled.

    pip install --no-deps zaragoza-construction-faq==1.2.1      # 503 FAQ question/answer pairs (CC BY 4.0)
    python benchmarks/st_step.py --at 0.5 --batch 32 --epochs 2

MultipleNegativesRankingLoss on (question, answer) pairs, one process, the same seed. The recycled model fills its
store first (``encode`` over every distinct text: the fill cost), then each epoch reads the bottom's states from
it; epochs of the two models alternate, and the per-epoch times (from the trainer's epoch begin to its end) are
compared as a ratio. Writes JSON with versions, git commit and machine.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import statistics
import time
from pathlib import Path

import torch

from layer_recycling.bench.assets import minilm_path
from layer_recycling.bench.retrieval import faq_pairs
from timing import meta, timed

def epoch_seconds(model, pairs, args, out: Path) -> float:
    """Wall time of one SentenceTransformerTrainer epoch of ``model`` on ``pairs`` (MNRL)."""
    import datasets
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments, losses
    from transformers import TrainerCallback

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_epoch_begin(self, *_, **__):
            times.append(time.perf_counter())

        def on_epoch_end(self, *_, **__):
            times.append(time.perf_counter() - times.pop())

    training = SentenceTransformerTrainingArguments(
        str(out), num_train_epochs=1, per_device_train_batch_size=args.batch, learning_rate=2e-5, report_to=[],
        use_cpu=args.device == "cpu", save_strategy="no", disable_tqdm=True, seed=0, logging_strategy="no")
    dataset = datasets.Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [a for _, a in pairs]})
    SentenceTransformerTrainer(model=model, args=training, train_dataset=dataset,
                               loss=losses.MultipleNegativesRankingLoss(model), callbacks=[Clock()]).train()
    return times[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--at", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2, help="epochs of each model, alternating")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("results/st_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from sentence_transformers import SentenceTransformer

    from layer_recycling.integrations.sentence_transformers import recycle_sentence_transformer, recycled_models

    pairs = faq_pairs()
    plain, base = (SentenceTransformer(str(minilm_path()), device=args.device) for _ in range(2))
    for m in (plain, base):
        m.max_seq_length = args.max_length
    recycled = recycle_sentence_transformer(base, args.at)
    rec = recycled_models(recycled)["0"]
    texts = list(dict.fromkeys(t for pair in pairs for t in pair))
    _, fill = timed(lambda: recycled.encode(texts, batch_size=args.batch))  # the bottom once per distinct text
    filled = rec.stats.bottom_examples
    times: dict[str, list[float]] = {"plain": [], "recycled": []}
    for epoch in range(args.epochs):
        order = [("plain", plain), ("recycled", recycled)][:: 1 if epoch % 2 == 0 else -1]
        for name, model in order:
            times[name].append(epoch_seconds(model, pairs, args, args.out.parent / "st_step_trainer"))
            print(f"epoch {epoch}: {name} {times[name][-1]:.1f}s", flush=True)
    plain_s, rec_s = statistics.median(times["plain"]), statistics.median(times["recycled"])
    result = {
        "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "pairs": len(pairs),
                     "distinct_texts": len(texts), "recycled_blocks": f"{rec.at}/{rec.num_layers}"},
        "fill_seconds": fill, "epoch_seconds": times, "median_plain": plain_s, "median_recycled": rec_s,
        "speedup": plain_s / rec_s, "bottom_examples_after_fill": rec.stats.bottom_examples - filled,
        "fill_over_plain_epoch": fill / plain_s,
        "meta": {**meta(), "sentence_transformers": importlib.metadata.version("sentence-transformers")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"fill {fill:.1f}s ({fill / plain_s:.2f} plain epochs); epoch plain {plain_s:.1f}s, recycled {rec_s:.1f}s: "
          f"{plain_s / rec_s:.2f}x; bottom examples after the fill: {result['bottom_examples_after_fill']}")


if __name__ == "__main__":
    main()
