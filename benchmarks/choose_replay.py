"""`recycle choose`'s search, replayed on the probes that earlier runs recorded, where no new training is needed.

    python benchmarks/choose_replay.py RECORDS [RECORDS...] --out FOLDER [--targets 0.5,1,2] [--budget 2]
                                       [--levels 0,0.25,0.5,0.75,1]

RECORDS: folders of answers written by benchmarks/choose.sh (every probe's validation scores per epoch and part, and
its seconds), the first preferred. Each task and target is searched again with the current rules of
``layer_recycling.bench.choose``: the order, the early stop (``judge``), the budget
(``over_budget``) and the verdict. With one seed a run is deterministic, and a level's training does not
depend on the target (only where it stops does), so a level may be read from any record of the same task: the one
recorded for the most epochs. The reference, the fill's seconds and the test scores come from the task's record in
the first folder that has one. A replay is written to FOLDER, marked ``"replayed_from"``, only when it is exact:
every level the search tries was recorded for at least as many epochs as the search trains it (where the search
stops a level earlier than its record, its seconds are the record's share of its epochs, said in
``"replay_note"``). Otherwise the script says which level needs a run. An answer FOLDER holds from a run is kept.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from layer_recycling.bench.choose import LEVELS, Probe, judge, over_budget


def _probe(record: dict) -> Probe:
    fields = {k: record[k] for k in ("label", "level", "at", "scores", "folds", "train_s", "eval_s", "verdict")}
    return Probe(**fields)


def replay(name: str, target: float, answer: dict, pool: dict[float, dict], num_layers: int, ats: dict[float, int],
           budget: float, tests: dict[str, float]) -> tuple[dict | None, str]:
    """The search's answer at ``target`` from ``answer``'s reference and the task's recorded probes ``pool`` (per
    level, the one recorded for the most epochs; ``tests``: the test scores recorded per setting), or None and why
    not."""
    reference = _probe(answer["probes"][0])
    epochs = len(reference.scores)
    seconds = {"reference": reference.train_s, "fill": answer["seconds"]["fill"], "training": 0.0,
               "scoring": reference.eval_s}
    probes, chosen, notes = [reference], None, []
    for level in sorted(ats, reverse=True):
        label = f"recycled {round(level * 100)}%"
        untried = over_budget(probes, seconds, num_layers, ats[level], epochs, budget, label, level)
        if untried is not None:
            probes.append(untried)
            continue
        if level not in pool:
            return None, f"{name} at {target:g}: {label} was never recorded"
        record = pool[level]
        probe = Probe(label, level, ats[level])
        # nothing to train (every block recycled, no head): one score, the pretrained model's, after the last epoch
        untrained = len(record["scores"]) == 1 and epochs > 1 and not record["verdict"].startswith("fails after")
        for epoch, parts in enumerate(record["folds"], 1):
            if judge(probe, reference, parts, epoch, epochs, target, against=epochs if untrained else epoch):
                break
        trained = len(probe.scores)
        if trained < epochs and not probe.verdict and not untrained:
            return None, f"{name} at {target:g}: {label} was recorded for {trained} of the {epochs} epochs it needs"
        share = trained / len(record["scores"])
        if share < 1:
            notes.append(f"{label}: {trained} of its {len(record['scores'])} recorded epochs, its seconds pro rata")
        probe.train_s, probe.eval_s = record["train_s"] * share, record["eval_s"] * share
        seconds["training"] += probe.train_s
        seconds["scoring"] += probe.eval_s
        if not probe.verdict:
            probe.verdict = "holds" if probe.drop <= target else "fails"
        probes.append(probe)
        if probe.verdict == "holds":
            chosen = probe
            break
    test = None
    if "full" in tests:
        test = {"full": tests["full"]}
        if chosen is not None:
            if chosen.label in tests:
                test[chosen.label] = tests[chosen.label]
            else:
                notes.append(f"{chosen.label}'s test score was not recorded")
    total = sum(seconds.values())
    out = {"level": chosen.level if chosen else None, "at": chosen.at if chosen else None, "max_drop": target,
           "metric": answer["metric"], "probes": [p.__dict__ for p in probes], "seconds": seconds, "budget": budget,
           "test": test, "cost": (total - seconds["scoring"]) / seconds["reference"],
           "cost_with_scoring": total / seconds["reference"]}
    return out, "; ".join(notes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("records", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--targets", type=lambda t: [float(x) for x in t.split(",")], default=None,
                    help="default: the targets the records hold")
    ap.add_argument("--budget", type=float, default=2.0)
    ap.add_argument("--levels", type=lambda t: [float(x) for x in t.split(",")], default=list(LEVELS),
                    help="the levels the runs were given")
    args = ap.parse_args()
    records: dict[str, list[tuple[Path, dict]]] = {}  # task: its records, the first folder's first
    for folder in args.records:
        for path in sorted(folder.glob("*.json")):
            records.setdefault(path.stem.rsplit("-", 1)[0], []).append((path, json.loads(path.read_text())))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, recorded in records.items():
        pool, ats, num_layers, tests = {}, {}, 0, {}
        for _, answer in recorded:
            for label, score in (answer.get("test") or {}).items():
                tests.setdefault(label, score)
            for p in answer["probes"][1:]:
                ats[p["level"]] = p["at"]
                if p["scores"] and len(p["scores"]) > len(pool.get(p["level"], {}).get("scores", [])):
                    pool[p["level"]] = p
                if p["level"] == 1.0:
                    num_layers = p["at"]
            num_layers = answer.get("num_layers") or num_layers  # recorded since the MPNet runs
        if not num_layers:
            print(f"needs a run: {name}'s records give no block count (no 100% probe, no num_layers)")
            continue
        for level in sorted(args.levels):  # levels no answer reached: their block counts, one level per count
            at = round(level * num_layers)
            if level not in ats and at not in ats.values():
                ats[level] = at
        source, base = recorded[0]
        for target in args.targets or sorted({a["max_drop"] for _, a in recorded}):
            dest = args.out / f"{name}-{target:g}.json"
            if dest.exists() and "replayed_from" not in json.loads(dest.read_text()):
                continue  # a run's answer
            out, note = replay(name, target, base, pool, num_layers, ats, args.budget, tests)
            if out is None:
                print(f"needs a run: {note}")
                continue
            out["replayed_from"] = str(source)
            if note:
                out["replay_note"] = note
            dest.write_text(json.dumps(out, indent=2))
            pick = "full" if out["level"] is None else f"{round(out['level'] * 100)}%"
            print(f"{name} {target:g}: {pick}, cost {out['cost']:.2f}" + (f" ({note})" if note else ""))

if __name__ == "__main__":
    main()
