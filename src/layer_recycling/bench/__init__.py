"""The tradeoff harness: full fine-tuning, frozen-without-cache and each recycling level on one task.

``sweep`` runs the settings in one process on the same data and writes one JSON result per run;
``report`` turns a folder of results into a table, a plot and a recommendation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from torch import nn

from .reporting import markdown, report, summarize
from .runner import Setting, TrainConfig, environment, run
from .tasks import Task

__all__ = ["Setting", "Task", "TrainConfig", "default_settings", "markdown", "report", "summarize", "sweep"]


def default_settings(levels: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), frozen_level: float = 0.5,
                     codecs: Sequence[str] = ("float16", "int8"), lora: bool = True) -> list[Setting]:
    """Full, frozen at ``frozen_level``, recycled at each level, LoRA on the top and each codec at 50%."""
    settings = [Setting("full"), Setting("frozen", frozen_level)]
    settings += [Setting("recycled", level) for level in levels]
    if lora:
        settings.append(Setting("recycled+lora", 0.5))
    settings += [Setting("recycled", 0.5, codec) for codec in codecs if codec != "float32"]
    return settings


def sweep(task: Task, model: str, make_model: Callable[[], nn.Module], settings: list[Setting],
          cfg: TrainConfig, out: str | Path, seeds: Sequence[int] = (0,), echo: Callable[[str], None] = print
          ) -> list[dict]:
    """Run every setting for every seed; write ``out/<dataset>-<model>-<label>-seed<k>.json`` for each run."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = environment()
    results = []
    for seed in seeds:
        for setting in settings:
            result = run(task, setting, make_model, TrainConfig(**{**cfg.__dict__, "seed": seed}))
            result.update(task=task.kind, dataset=task.dataset, model=Path(model).name, model_source=str(model),
                          seed=seed, meta=meta,
                          config={**cfg.__dict__, "seed": seed, "train_examples": len(task.train),
                                  "test_examples": len(task.test)})
            name = f"{task.dataset}-{Path(model).name}-{setting.label}-seed{seed}".replace(" ", "_").replace("%", "pct")
            (out / f"{name}.json").write_text(json.dumps(result, indent=2))
            results.append(result)
            echo(f"{setting.label:>24}  {task.metric} {result['score']:6.2f}  end-to-end {result['end_to_end_s']:7.1f} s"
                 f"  (fill {result['fill_s']:.1f} s, {result['train_s_per_epoch']:.1f} s/epoch)")
    return results
