"""`recycle choose`'s search, replayed on the probes that earlier runs recorded, where no new training is needed.

    python benchmarks/choose_replay.py OLD_FOLDER NEW_FOLDER [--budget 2] [--levels 0,0.25,0.5,0.75,1]

Each answer of OLD_FOLDER (written by benchmarks/choose.sh: every probe's validation scores per epoch and part,
and its seconds) is searched again with the current rules of ``layer_recycling.bench.choose``: the order, the
early stop (``not_recovering``), the budget (``predicted_seconds``) and the verdict. A probe's training does not
depend on the target (only where it stops does), so a level may be read from any answer of the same task. The
replay is written to NEW_FOLDER, marked ``"replayed_from"``, only when it is exact: every level the search tries was
recorded for at least as many epochs as the search trains it, and where the search stops a level earlier than
the record, its seconds are the record's share of its epochs (said in ``"replay_note"``). Otherwise the answer
needs a run, and the script says which level is missing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from layer_recycling.bench.choose import LEVELS, Probe, _drop, not_recovering, predicted_seconds


def _probe(record: dict) -> Probe:
    fields = {k: record[k] for k in ("label", "level", "at", "scores", "folds", "train_s", "eval_s", "verdict")}
    return Probe(**fields)


def replay(name: str, answer: dict, pool: dict[float, dict], num_layers: int, ats: dict[float, int],
           budget: float) -> tuple[dict | None, str]:
    """The new search's answer from ``answer``'s reference and the task's recorded probes ``pool`` (per level, the
    one recorded for the most epochs), or None and why not."""
    reference = _probe(answer["probes"][0])
    epochs, target = len(reference.scores), answer["max_drop"]
    seconds = {"reference": reference.train_s, "fill": answer["seconds"]["fill"], "training": 0.0,
               "scoring": reference.eval_s}
    probes, chosen, notes = [reference], None, []
    for level in sorted(ats, reverse=True):
        label = f"recycled {round(level * 100)}%"
        guess = predicted_seconds(probes, num_layers, ats[level], epochs)
        spent = sum(seconds.values()) - seconds["scoring"]
        if probes[-1].verdict.startswith("not tried") or spent + guess > budget * seconds["reference"]:
            probes.append(Probe(label, level, ats[level], verdict=f"not tried: about {guess:.0f} s more would pass "
                                                                   f"the budget of {budget:g} full fine-tunings"))
            continue
        if level not in pool:
            return None, f"{name} at {target:g}: {label} was never recorded"
        record = pool[level]
        probe = Probe(label, level, ats[level])
        # nothing to train (every block recycled, no head): one score, the pretrained model's, after the last epoch
        untrained = len(record["scores"]) == 1 and epochs > 1 and not record["verdict"].startswith("fails after")
        for epoch, folds in enumerate(record["folds"], 1):
            probe.folds.append(folds)
            probe.scores.append(sum(folds) / len(folds))
            _drop(probe, reference, epochs if untrained else epoch)
            probe.drops.append(probe.drop)
            probe.behind.append(probe.drop - 2 * (probe.se or 0.0) > target)
            if epoch < epochs and not_recovering(probe):
                probe.verdict = f"fails after epoch {epoch} of {epochs}"
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
    if answer.get("test") is not None:
        test = {"full": answer["test"]["full"]}
        if chosen is not None:
            score = answer["test"].get(chosen.label)
            if score is None:
                notes.append(f"{chosen.label}'s test score was not recorded")
            else:
                test[chosen.label] = score
    total = sum(seconds.values())
    out = {"level": chosen.level if chosen else None, "at": chosen.at if chosen else None, "max_drop": target,
           "metric": answer["metric"], "probes": [p.__dict__ for p in probes], "seconds": seconds, "budget": budget,
           "test": test, "cost": (total - seconds["scoring"]) / seconds["reference"],
           "cost_with_scoring": total / seconds["reference"]}
    return out, "; ".join(notes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--budget", type=float, default=2.0)
    ap.add_argument("--levels", type=lambda t: [float(x) for x in t.split(",")], default=list(LEVELS),
                    help="the levels the runs were given")
    args = ap.parse_args()
    answers: dict[str, dict[str, dict]] = {}
    for path in sorted(args.old.glob("*.json")):
        name, target = path.stem.rsplit("-", 1)
        answers.setdefault(name, {})[target] = json.loads(path.read_text())
    args.new.mkdir(parents=True, exist_ok=True)
    for name, by_target in answers.items():
        pool, ats, num_layers = {}, {}, 0
        for answer in by_target.values():
            for p in answer["probes"][1:]:
                ats[p["level"]] = p["at"]
                if p["scores"] and len(p["scores"]) > len(pool.get(p["level"], {}).get("scores", [])):
                    pool[p["level"]] = p
                if p["level"] == 1.0:
                    num_layers = p["at"]
        for level in sorted(args.levels):  # levels no answer reached: their block counts, one level per count
            at = round(level * num_layers)
            if level not in ats and at not in ats.values():
                ats[level] = at
        for target, answer in by_target.items():
            out, note = replay(name, answer, pool, num_layers, ats, args.budget)
            if out is None:
                print(f"needs a run: {note}")
                continue
            out["replayed_from"] = f"{args.old.name}/{name}-{target}.json"
            if note:
                out["replay_note"] = note
            (args.new / f"{name}-{target}.json").write_text(json.dumps(out, indent=2))
            pick = "full" if out["level"] is None else f"{round(out['level'] * 100)}%"
            print(f"{name} {target}: {pick}, cost {out['cost']:.2f}" + (f" ({note})" if note else ""))


if __name__ == "__main__":
    main()
