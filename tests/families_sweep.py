"""Families recycled with no ``blocks=``, at every level and head: the max abs diff from each example run alone
(right and left padding, misses and hits; raw clips right-padded only, left-padded ones refused), or the refusal.
A report, not a test:

    HF_HUB_OFFLINE=1 PYTHONPATH=src:tests python tests/families_sweep.py [case ...]          # families.FOUND
    HF_HUB_OFFLINE=1 PYTHONPATH=src:tests python tests/families_sweep.py --table [case ...]  # families.FAMILIES
    HF_HUB_OFFLINE=1 PYTHONPATH=src:tests python tests/families_sweep.py --alone [case ...]  # table entries removed
    HF_HUB_OFFLINE=1 PYTHONPATH=src:tests python tests/families_sweep.py --table [case ...]  # table entries as shipped
"""

from __future__ import annotations

import sys
import warnings

import torch

import layer_recycling as lr
from families import FAMILIES, FOUND, LAYERS, Missing, alone, build, build_found, examples, is_audio, padded, worst
from layer_recycling import arch


def sweep(case: str, head: str, make) -> str:
    """'max diff D over levels 0..L' or the first refusal (its level and text)."""
    try:
        model = make(case, head)
    except Missing as err:
        return f"skipped: {err}"
    rows = examples(case)
    try:
        want = alone(model, rows)
    except Exception as err:  # noqa: BLE001 - the examples do not fit the model: say so
        return f"the model alone fails: {type(err).__name__}: {err}"
    result, at, levels = 0.0, 0, LAYERS
    while at <= levels:  # a family found at its stages (LeViT) has fewer levels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rec = lr.recycle(model, at=at).eval()
                levels = rec.num_layers
                for side in ("right",) if is_audio(rows) else ("right", "left"):
                    batch = padded(rows, side, rec.pipeline.pad_id)
                    with torch.no_grad():
                        result = max(result, worst(want, batch, rec(**batch)), worst(want, batch, rec(**batch)))
        except Exception as err:  # noqa: BLE001 - the refusal is the finding
            return f"at {at}: {type(err).__name__}: {err}"
        at += 1
    return f"max diff {result:.3g} over levels 0..{levels} (blocks {rec.arch.blocks!r})"


def main(args: list[str]) -> None:
    removed, table = args[:1] == ["--alone"], args[:1] == ["--table"]
    names = args[1:] if removed or table else args
    cases = FAMILIES if removed or table else FOUND
    for case in names or list(cases):
        heads = cases[case][2 if cases is FOUND else 3]
        entry = arch.TABLE.pop(FAMILIES[case][0]) if removed else None
        try:
            for head in heads:
                print(f"{case} {head}: {sweep(case, head, build_found if cases is FOUND else build)}", flush=True)
        finally:
            if removed:
                arch.TABLE[FAMILIES[case][0]] = entry


if __name__ == "__main__":
    main(sys.argv[1:])
