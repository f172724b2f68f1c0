"""Turn a folder of result JSON files into a markdown table, a speedup-vs-score plot and a recommendation.

Speedups are ratios against full fine-tuning (and the frozen-without-cache run) of the same sweep: the same
task, data, model and machine. Repeated seeds are averaged; the spread is their standard deviation. Results made
under other conditions (config, examples, model) are refused a shared table rather than compared.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from .result import REQUIRED, Result
from .settings import SETTINGS


def load(folder: str | Path) -> list[Result]:
    """Every result in ``folder`` (``*.json``), checked for the fields a report needs."""
    return [result for _, result in _load(Path(folder))]


def _load(folder: Path) -> list[tuple[Path, Result]]:
    if folder.is_file():
        raise NotADirectoryError(f"{folder} is a file; expected the folder that `recycle bench --out` wrote")
    if not folder.is_dir():
        raise FileNotFoundError(f"no results folder at {folder}; run `recycle bench --out {folder}` first")
    found = read(folder)
    if not found:
        raise ValueError(f"{folder} holds no result files (*.json, hidden files skipped); run `recycle bench "
                         f"--out {folder}` first")
    return found


def read(folder: Path) -> list[tuple[Path, Result]]:
    """(path, result) for every ``*.json`` in ``folder`` (none if it does not exist), checked like ``load``."""
    found = []
    for path in sorted(p for p in folder.glob("*.json") if not p.name.startswith(".")):  # skip hidden files
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); a run stopped while writing it leaves such a "
                             f"file: delete it and rerun that setting") from None
        try:
            found.append((path, Result.from_json(doc, str(path))))
        except ValueError as err:
            raise ValueError(f"{err}; a report reads every *.json in {folder}: move it elsewhere") from None
    return found


_MEANS = ("score", "fill_s", "train_s_per_epoch", "end_to_end_s", "infer_hits_per_s", "infer_misses_per_s",
          "cache_bytes")  # averaged over a setting's seeds


def summarize(results: list[Result]) -> list[dict]:
    """One row per setting (seeds averaged), with speedups against the full and frozen runs."""
    groups: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        groups[r.label].append(r)
    rows = []
    for label, runs in groups.items():
        first, mean = runs[0], {k: statistics.fmean(getattr(r, k) for r in runs) for k in _MEANS}
        val = [r.val_score for r in runs if r.val_score is not None]
        floors = {k: [getattr(r, k) for r in runs if getattr(r, k) is not None]
                  for k in ("constant_score", "constant_val_score")}
        rows.append({"setting": first.setting, "level": first.level, "at": first.at, "codec": first.codec,
                     "metric": first.metric, "label": label, **mean, "seeds": len(runs),
                     "val_score": statistics.fmean(val) if len(val) == len(runs) else None,
                     **{k: statistics.fmean(v) if len(v) == len(runs) else None for k, v in floors.items()}})
    full = _find(rows, "full")
    frozen = _find(rows, "frozen")
    for row in rows:
        _spread(row, groups[row["label"]], groups["full"] if full else [])
        row["speedup"] = full["end_to_end_s"] / row["end_to_end_s"] if full else None
        row["vs_frozen"] = frozen["end_to_end_s"] / row["end_to_end_s"] if frozen else None
        row["drop"] = full["score"] - row["score"] if full else None
        both = full is not None and full["val_score"] is not None and row["val_score"] is not None
        row["val_drop"] = full["val_score"] - row["val_score"] if both else None
    return sorted(rows, key=lambda r: (SETTINGS.index(r["setting"]), r["codec"] not in (None, "float32"), r["codec"] or "",
                                       r["level"]))


# Two-sided 95% Student t quantiles by degrees of freedom (seeds - 1); past 10 seeds 2.2 is near enough.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def interval(values: list[float]) -> tuple[float, float | None, float | None]:
    """(mean, standard deviation, half width of the 95% t-interval); the spread is None for one value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    sd = statistics.stdev(values)
    return mean, sd, _T95.get(len(values) - 1, 2.2) * sd / len(values) ** 0.5


def _spread(row: dict, runs: list[Result], full_runs: list[Result]) -> None:
    """Per-seed speedups and drops against full of the same seed, as mean, sd and 95% half width."""
    full = {r.seed: r for r in full_runs}
    paired = [(r, full[r.seed]) for r in runs if r.seed in full]
    _, row["score_sd"], row["score_ci"] = interval([r.score for r in runs])
    speedups = [f.end_to_end_s / r.end_to_end_s for r, f in paired]
    row["speedup_sd"], row["speedup_ci"] = interval(speedups)[1:] if speedups else (None, None)
    with_val = all(x.val_score is not None for pair in paired for x in pair)
    row["test_drop_ci"] = interval([f.score - r.score for r, f in paired])[2] if paired else None
    val_drops = [f.val_score - r.val_score for r, f in paired] if with_val else []
    row["val_drop_ci"] = interval(val_drops)[2] if val_drops else None
    row["drop_ci"] = row["val_drop_ci"] if with_val else row["test_drop_ci"]  # of the drop the choice reads


def _find(rows: list[dict], setting: str) -> dict | None:
    return next((r for r in rows if r["setting"] == setting), None)


def recommend(rows: list[dict], max_drop: float) -> dict | None:
    """The most recycled setting within ``max_drop`` points of full fine-tuning that is also faster than it.

    The drop is read on the validation split whenever every row has one, so that the test score of the chosen
    setting is an unbiased check of the choice; results without validation scores fall back to the test drop. None
    when full fine-tuning learned nothing (``learned_nothing``): every setting would be within any drop of it.
    """
    if learned_nothing(rows):
        return None
    key = "val_drop" if _on_validation(rows) else "drop"
    ok = [r for r in rows if (r["setting"].startswith("recycled") or r["setting"] == "head") and r[key] is not None
          and r[key] <= max_drop and r["speedup"] > 1.0]
    return max(ok, key=lambda r: (r["level"], r["speedup"]), default=None)


def learned_nothing(rows: list[dict]) -> str | None:
    """Why full fine-tuning is no reference, in words, when its mean score on the split the choice reads is no
    better than a constant prediction's (the most frequent training label everywhere); else None (also for tasks and
    older results without a constant's score)."""
    full = _find(rows, "full")
    if full is None:
        return None
    split, score, floor = (("validation", "val_score", "constant_val_score") if _on_validation(rows) else
                           ("test", "score", "constant_score"))
    if full[score] is None or full.get(floor) is None or full[score] > full[floor]:
        return None
    return (f"Full fine-tuning scored {full[score]:.2f} {full['metric']} on {split}, no better than predicting the "
            f"most frequent training label everywhere ({full[floor]:.2f}): it learned nothing, so no setting is "
            f"recommended against it. Train longer (--epochs) or change the learning rate (--lr), or check the "
            f"labels.")


def pareto(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on both speedup and score."""
    return [r for r in rows if not any(o["speedup"] >= r["speedup"] and o["score"] >= r["score"] and
                                       (o["speedup"], o["score"]) != (r["speedup"], r["score"]) for o in rows)]


def markdown(rows: list[dict], title: str, max_drop: float) -> str:
    """A markdown table of ``rows``, the rule the choice follows, and the recommendation line."""
    metric, seeds = rows[0]["metric"], max(r["seeds"] for r in rows)
    spread = (f"Mean ± 95% interval over {seeds} seeds; drops are against full fine-tuning of the same seed."
              if seeds > 1 else "One seed: no interval (pass --seeds 0,1,2 for mean ± 95% interval).")
    lines = [f"### {title}", "", spread, "",
             f"| setting | at | validation drop | test {metric} | test drop | end-to-end speedup | vs frozen | "
             "train s/epoch | fill s | hits/s | misses/s | cache MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        scores = (plus_minus(r["val_drop"], r["val_drop_ci"]), plus_minus(r["score"], r["score_ci"], "{:.2f}"),
                  plus_minus(r["drop"], r["test_drop_ci"]))
        lines.append(
            f"| {r['label']} | {r['at']} | {' | '.join(scores)} | {_x(r['speedup'])} | "
            f"{_x(r['vs_frozen'])} | {r['train_s_per_epoch']:.1f} | {r['fill_s']:.1f} | {r['infer_hits_per_s']:.0f} "
            f"| {r['infer_misses_per_s']:.0f} | {r['cache_bytes'] / 1e6:.1f} |"
        )
    lines += ["", rule_text(rows, max_drop), "", recommendation_text(rows, max_drop)]
    return "\n".join(lines)


def _on_validation(rows: list[dict]) -> bool:
    """Whether the choice reads validation drops (every recycled row has one), as ``recommend`` does."""
    return all(r["val_drop"] is not None for r in rows if r["setting"] != "full")


def rule_text(rows: list[dict], max_drop: float) -> str:
    """The rule ``recommend`` applies, in words, and which split it reads."""
    check = ("the validation split, then checked on the test split" if _on_validation(rows) else
             "the test split (these results have no validation scores: the choice is not checked on unseen data)")
    return (f"Rule: the most recycled setting whose mean drop against full fine-tuning is at most {max_drop} points "
            f"and that is faster end to end than full fine-tuning, chosen on {check}.")


def recommendation_text(rows: list[dict], max_drop: float) -> str:
    why = learned_nothing(rows)
    if why:
        return why
    best = recommend(rows, max_drop)
    if best is None:
        return _nothing_qualifies(rows, max_drop)
    if best["val_drop"] is None:
        return (f"Recommended for a drop of at most {max_drop} points: **{best['label']}** ({best['at']} blocks), "
                f"{best['metric']} {best['score']:.2f} ({_signed(-best['drop'])} against full), "
                f"{_x(best['speedup'])} faster end to end. (Chosen on the test scores: these results have no "
                f"validation scores, so the test drop is optimistic; rerun `recycle bench` with --val.)")
    held = "stayed within" if best["drop"] <= max_drop else "did NOT stay within"
    return (f"Recommended for a drop of at most {max_drop} points (chosen on validation): **{best['label']}** "
            f"({best['at']} blocks), validation drop {best['val_drop']:+.2f}; on test {best['metric']} "
            f"{best['score']:.2f} ({_signed(-best['drop'])} against full), which {held} the target; "
            f"{_x(best['speedup'])} faster end to end.{_caveat(best, max_drop)}")


def _nothing_qualifies(rows: list[dict], max_drop: float) -> str:
    """The no-recommendation line: on which split nothing qualified, and what the test split showed."""
    faster = [r for r in rows if r["setting"].startswith("recycled") and r["speedup"] and r["speedup"] > 1.0]
    on_test = [r["label"] for r in faster if r["drop"] is not None and r["drop"] <= max_drop]
    if not _on_validation(rows):
        return (f"Chosen on test (these results have no validation scores; rerun `recycle bench` with --val): no "
                f"recycled setting is both faster than full fine-tuning and within {max_drop} points of its test "
                f"score: keep fine-tuning in full, or accept a larger drop (--max-drop).")
    shown = (f"{len(on_test)} faster recycled setting(s) stayed within {max_drop} points there "
             f"({', '.join(on_test)}), which one test split cannot confirm" if on_test else
             f"no faster recycled setting stayed within {max_drop} points there either")
    return (f"Chosen on validation: no recycled setting is both faster than full fine-tuning and within {max_drop} "
            f"points of its validation score, so none is recommended: keep fine-tuning in full, or accept a larger "
            f"drop (--max-drop). On test, {shown}.")


def _caveat(best: dict, max_drop: float) -> str:
    """The flag for a choice that the seeds' spread cannot tell from a larger drop."""
    drop = best["val_drop"] if best["val_drop"] is not None else best["drop"]
    if best.get("drop_ci") is None:
        return " One seed: no spread is known (pass --seeds 0,1,2)."
    if drop + best["drop_ci"] > max_drop:
        return (f" Within the target on average, but the seeds cannot tell it from a drop of "
                f"{drop + best['drop_ci']:.2f} (95% interval): treat it as borderline.")
    return f" The 95% interval of its drop ({drop:+.2f} +- {best['drop_ci']:.2f}) stays within the target."


def plot(rows: list[dict], path: str | Path, title: str) -> Path:
    """Speedup (x) against score (y), one point per setting, the Pareto front drawn as a line."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = dict(zip(SETTINGS, ("tab:red", "tab:gray", "tab:blue", "tab:purple", "tab:orange")))
    for i, r in enumerate(sorted(rows, key=lambda r: r["speedup"])):
        ax.errorbar(r["speedup"], r["score"], yerr=r["score_sd"] or None, fmt="o", capsize=3,
                    color=colors[r["setting"]])
        # neighbours often share a score: cycle the labels through four heights, each tied to its point
        ax.annotate(r["label"], (r["speedup"], r["score"]), textcoords="offset points", fontsize=8,
                    xytext=(6, (10, -16, 24, -30)[i % 4]), arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6})
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    front = sorted(pareto(rows), key=lambda r: r["speedup"])
    ax.plot([r["speedup"] for r in front], [r["score"] for r in front], "--", color="tab:green", label="Pareto front")
    ax.set_xlabel("end-to-end speedup over full fine-tuning (log scale)")
    ax.set_ylabel(rows[0]["metric"])
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


# Seeds repeat a configuration and settings are its rows; everything else a result records about how it was made
# (the training config, the task's examples and preprocessing, the model) must match for its ratios to mean anything.
_UNRECORDED = "not recorded"  # results written before a condition was recorded
_HINTS = {"data_fingerprint": " (a hash of the examples: another dataset file, --seed, --train/--test/--val or "
                              "tokenizer)"}


def conditions(model_source: str | None, config: dict | None) -> dict:
    """What results must share to sit in one table: the model's source and every config field but the seed."""
    return {"model_source": model_source or _UNRECORDED, **{k: v for k, v in (config or {}).items() if k != "seed"}}


def differences(found: list[tuple[str, dict]]) -> dict[str, dict[str, list[str]]]:
    """The conditions that runs ((name, ``conditions``) pairs) disagree on: {field: {value as JSON: names}}."""
    diffs = {}
    for field in dict.fromkeys(k for _, c in found for k in c):  # first-seen order
        by_value: dict[str, list[str]] = defaultdict(list)
        for name, c in found:
            by_value[json.dumps(c.get(field, _UNRECORDED), sort_keys=True)].append(name)
        if len(by_value) > 1:
            diffs[field] = dict(by_value)
    return diffs


def _listed(diffs: dict[str, dict[str, list[str]]], most: int = 3) -> str:
    """``epochs: 1 (a.json) vs 3 (b.json, c.json, d.json and 2 more)`` for each field in ``diffs``."""
    def names(found: list[str]) -> str:
        return ", ".join(found[:most]) + (f" and {len(found) - most} more" if len(found) > most else "")

    return "; ".join(f"{field}{_HINTS.get(field, '')}: " + " vs ".join(f"{v} ({names(n)})" for v, n in values.items())
                     for field, values in diffs.items())


def _table(result: Result) -> tuple[str, str, str]:
    return result.task, result.dataset, result.model


def _title(table: tuple[str, str, str]) -> str:
    return "{} on {} with {}".format(*table)


def check_addition(folder: str | Path, table: tuple[str, str, str], shared: dict) -> None:
    """Refuse to add results of ``table`` (task, dataset, model) made under ``shared`` (``runner.conditions``:
    model source and config) to ``folder`` when its results of the same table were made under others."""
    same = [(path.name, _conditions(r)) for path, r in read(Path(folder)) if _table(r) == table]
    diffs = differences([*same, ("this run", conditions(shared["model_source"], shared["config"]))])
    if diffs:
        raise ValueError(f"{folder} already holds results of {_title(table)} made under other conditions: "
                         f"{_listed(diffs)}. One report would take speedups and drops across them. Pass a new --out "
                         f"folder, or remove those results from {folder} first")


def _conditions(result: Result) -> dict:
    return conditions(result.model_source, result.config)


def check(folder: Path, runs: list[tuple[Path, Result]]) -> None:
    """Refuse a table whose ratios would mislead: mixed conditions, a run of no time, or no full baseline."""
    title, named = _title(_table(runs[0][1])), [(path.name, r) for path, r in runs]
    diffs = differences([(n, _conditions(r)) for n, r in named])
    if diffs:
        raise ValueError(f"{folder} mixes results of {title} made under different conditions: {_listed(diffs)}. "
                         f"Speedups and drops are ratios to full fine-tuning of the same configuration, so one table "
                         f"cannot hold them: move each run's files into a folder of their own (or delete the stale "
                         f"ones) and report each folder")
    untimed = [(n, r) for n, r in named if not r.end_to_end_s > 0 or _epochs(r) < 1]
    if untimed:
        how = "; ".join(f"{n}: epochs {(r.config or {}).get('epochs', _UNRECORDED)}, end to end "
                        f"{r.end_to_end_s:.3g} s" for n, r in untimed[:3])
        more = f" and {len(untimed) - 3} more" if len(untimed) > 3 else ""
        raise ValueError(f"{folder}: runs of {title} trained nothing ({how}{more}): with no training there is no "
                         f"time to take a speedup against. Rerun `recycle bench` with --epochs 1 or more into a new "
                         f"--out folder (or delete these files)")
    if not any(r.setting == "full" for _, r in named):
        held = ", ".join(sorted({r.label for _, r in named}))
        raise ValueError(f"{folder} has no full fine-tuning result for {title} (it holds {held}); full fine-tuning "
                         f"is the baseline of every speedup and drop. `recycle bench` runs it last, so a bench stopped "
                         f"early leaves this. Rerun the same `recycle bench` command with --out {folder}: it runs "
                         f"every setting again, full included, and replaces these files")


def _epochs(result: Result) -> float:
    """The epochs a result trained for (results that do not record it: taken as trained)."""
    epochs = (result.config or {}).get("epochs")
    return epochs if isinstance(epochs, (int, float)) else 1


def report(folder: str | Path, max_drop: float = 1.0) -> str:
    """Markdown for every sweep in ``folder``; writes ``report.md`` and one PNG plot per sweep there.

    Raises:
        ValueError: a sweep's results were made under different conditions (``differences``), one took no time,
            or it has no full fine-tuning result: the ratios would be wrong or undefined.
    """
    folder = Path(folder)
    sweeps: dict[tuple, list[tuple[Path, Result]]] = defaultdict(list)
    for path, r in _load(folder):
        sweeps[_table(r)].append((path, r))
    for runs in sweeps.values():
        check(folder, runs)
    parts = []
    for (task, dataset, model), runs in sorted(sweeps.items()):
        rows = summarize([r for _, r in runs])
        title = _title((task, dataset, model))
        try:
            png = plot(rows, folder / f"{dataset}-{model}.png".replace("/", "_"), title)
            picture = f"![{title}]({png.name})"
        except ImportError as err:  # the table stands on its own; say why there is no picture
            picture = f"(no plot: {err.name or 'matplotlib'} is not installed; pip install 'layer-recycling[bench]')"
        parts.append(markdown(rows, title, max_drop) + f"\n\n{picture}\n")
    text = "\n".join(parts)
    (folder / "report.md").write_text(text)
    return text


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f}"


def plus_minus(mean: float | None, spread: float | None, fmt: str = "{:+.2f}") -> str:
    """``mean ± spread``; the mean alone without a spread, ``-`` without a mean."""
    if mean is None:
        return "-"
    return fmt.format(mean) + (f" ± {spread:.2f}" if spread is not None else "")
