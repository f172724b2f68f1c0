"""Every family of ``families.FOUND`` recycled with no ``blocks=``, at every level and head: the max abs diff from
each example run alone (right and left padding, misses and hits), or the refusal. A report, not a test:

    HF_HUB_OFFLINE=1 PYTHONPATH=src:tests python tests/families_sweep.py [case ...]
"""

from __future__ import annotations

import sys
import warnings

import torch

import layer_recycling as lr
from families import FOUND, LAYERS, Missing, alone, build_found, examples, padded, worst


def sweep(case: str, head: str) -> str:
    """'max diff D over levels 0..L' or the first refusal (its level and text)."""
    try:
        model = build_found(case, head)
    except Missing as err:
        return f"skipped: {err}"
    rows = examples(case)
    try:
        want = alone(model, rows)
    except Exception as err:  # noqa: BLE001 - the examples do not fit the model: say so
        return f"the model alone fails: {type(err).__name__}: {err}"
    result = 0.0
    for at in range(LAYERS + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rec = lr.recycle(model, at=at).eval()
                for side in ("right", "left"):
                    batch = padded(rows, side, rec.pipeline.pad_id)
                    with torch.no_grad():
                        result = max(result, worst(want, batch, rec(**batch)), worst(want, batch, rec(**batch)))
        except Exception as err:  # noqa: BLE001 - the refusal is the finding
            return f"at {at}: {type(err).__name__}: {err}"
    return f"max diff {result:.3g} over levels 0..{LAYERS}"


if __name__ == "__main__":
    for case in sys.argv[1:] or list(FOUND):
        for head in FOUND[case][2]:
            print(f"{case} {head}: {sweep(case, head)}", flush=True)
