"""The tables of docs/findings.md, from the sweeps ``benchmarks/findings.sh`` ran (one folder per task).

    python benchmarks/findings.py [results/findings] [--docs docs] [--cpu]   # prints markdown, one plot per task

--cpu: speedups from the runs' CPU seconds of fill and training (``end_to_end_cpu_s``) instead of wall seconds: with
one thread a run's CPU seconds are its wall seconds on an idle core, whatever else the machine ran.

Per task: every setting's validation drop with its 95% interval, test score and drop, speedup with its spread;
then, for each target drop (0.5, 1 and 2 points), the setting chosen on validation and whether test agrees.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

from layer_recycling.bench.reporting import Result, load, plot, recommend, summarize
from layer_recycling.bench.reporting import plus_minus as _pm

TARGETS = (0.5, 1.0, 2.0)


def _load(folder: Path, cpu: bool = False) -> list[Result]:
    """The folder's runs; with ``cpu``, each run's end-to-end seconds are its CPU seconds."""
    runs = load(folder)
    if cpu:
        missing = [r.label for r in runs if r.end_to_end_cpu_s is None]
        if missing:
            raise ValueError(f"{folder}: --cpu needs end_to_end_cpu_s, which {missing} lack (older results)")
        runs = [dataclasses.replace(r, end_to_end_s=r.end_to_end_cpu_s) for r in runs]
    return runs


def summary_row(folder: Path, cpu: bool = False) -> str:
    """One line per task: the 50% level's test drop and speedup, and the level chosen on validation per target."""
    runs = _load(folder, cpu)
    rows = summarize(runs)
    first, seeds = runs[0], len({r.seed for r in runs})
    half = next((r for r in rows if r["label"] == "recycled 50%"), None)
    picks = []
    for target in TARGETS:
        best = recommend(rows, target)
        picks.append("full" if best is None else f"{best['label'].replace('recycled ', '')} ({best['drop']:+.1f}, "
                     f"{best['speedup']:.2f}x)")
    half_text = ("-" if half is None else
                 f"{_pm(half['drop'], half['test_drop_ci'])} / {half['speedup']:.2f}x")
    kind = " (retrieval)" if first.task == "retrieval" else ""
    return (f"| {first.dataset}{kind}, {first.model} | {seeds} | {rows[0]['metric']} "
            f"{_pm(next(r for r in rows if r['setting'] == 'full')['score'], None, '{:.1f}')} | {half_text} | "
            + " | ".join(picks) + " |")


def task_section(folder: Path, docs: Path, cpu: bool = False) -> str:
    runs = _load(folder, cpu)
    rows = summarize(runs)
    first = runs[0]
    cfg = first.config or {}
    seeds = sorted({r.seed for r in runs})
    title = f"{first.task} on {first.dataset} with {first.model}"
    png = plot(rows, docs / f"findings-{folder.name}.png", title)
    metric = rows[0]["metric"]
    val_n = cfg.get("val_examples", "10%")  # the default --val 0.1 (older results do not record the count)
    lines = [f"### {title}", "",
             (f"{cfg['sizes']}" if "sizes" in cfg else
              f"{cfg['train_examples']} training and {val_n} validation examples (held out of the training data), "
              f"{cfg['test_examples']} test") + f", {cfg['epochs']} epochs, lr {cfg['lr']}, batch {cfg['batch_size']}; "
             f"seeds {', '.join(map(str, seeds))}. Mean ± sd over seeds; drops are against full fine-tuning of the "
             f"same seed, ± the 95% t-interval." + (" Speedups in CPU seconds of fill and training." if cpu else ""),
             "",
             f"| setting | blocks | validation drop | test {metric} | test drop | end-to-end speedup | fill s | "
             f"cache MB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['at']} | {_pm(r['val_drop'], r['drop_ci'])} | "
                     f"{_pm(r['score'], r['score_sd'], '{:.2f}')} | {r['drop']:+.2f} | "
                     f"{_pm(r['speedup'], r['speedup_sd'], '{:.2f}x')} | {r['fill_s']:.1f} | "
                     f"{r['cache_bytes'] / 1e6:.1f} |")
    lines += ["", "| target drop | chosen on validation | validation drop | test drop | held on test | speedup | "
              "spread |", "|---|---|---|---|---|---|---|"]
    for target in TARGETS:
        best = recommend(rows, target)
        if best is None:
            lines.append(f"| {target} | none (keep full fine-tuning) | - | - | - | - | - |")
            continue
        drop = best["val_drop"] if best["val_drop"] is not None else best["drop"]
        ci = best["drop_ci"]
        spread = ("one seed" if ci is None else "borderline" if drop + ci > target else "clear")
        lines.append(f"| {target} | {best['label']} ({best['at']} blocks) | {_pm(drop, ci)} | {best['drop']:+.2f} | "
                     f"{'yes' if best['drop'] <= target else 'no'} | "
                     f"{_pm(best['speedup'], best['speedup_sd'], '{:.2f}x')}"
                     f" | {spread} |")
    lines += ["", *all_scores(runs, [r["label"] for r in rows]), f"![{title}]({png.name})", ""]
    return "\n".join(lines)


def all_scores(runs: list[Result], labels: list[str]) -> list[str]:
    """Every test score a task reports (retrieval: R@1/5/10, MRR@10, nDCG@10), mean ± sd over seeds, per setting;
    nothing for a task with a single score."""
    names = list(runs[0].scores or {})
    if len(names) < 2:
        return []
    lines = ["| setting | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label in labels:
        mine = [r for r in runs if r.label == label]
        cells = []
        for name in names:
            values = [r.scores[name] for r in mine]
            sd = statistics.stdev(values) if len(values) > 1 else None
            cells.append(_pm(statistics.fmean(values), sd, "{:.2f}"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", nargs="?", type=Path, default=Path("results/findings"))
    ap.add_argument("--docs", type=Path, default=Path("docs"), help="where the plots go")
    ap.add_argument("--cpu", action="store_true", help="speedups in CPU seconds (end_to_end_cpu_s), not wall seconds")
    args = ap.parse_args()
    folders = sorted(p for p in args.root.iterdir()
                     if p.is_dir() and not p.name.startswith(".") and ".part" not in p.name)
    print("| task | seeds | full (test) | 50%: test drop / speedup | pick for 0.5 | pick for 1 | pick for 2 |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(summary_row(f, args.cpu) for f in folders))
    print()
    print("\n".join(task_section(f, args.docs, args.cpu) for f in folders))


if __name__ == "__main__":
    main()
