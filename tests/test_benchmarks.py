"""benchmarks/gpu_check.py runs unchanged on a CPU with tiny sizes (--smoke): the script a lent GPU will run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_the_gpu_check_runs_on_cpu_and_writes_every_ratio(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("gpu_check", None)
    import gpu_check

    out = gpu_check.main(["--smoke", "--device", "cpu", "--out", str(tmp_path / "gpu.json")])
    written = json.loads((tmp_path / "gpu.json").read_text())
    assert written["device"] == "cpu" and len(written["results"]) == 1 == len(out["results"])
    ratios = written["results"][0]["ratios"]
    assert set(ratios) == {"a_over_c16", "b_over_c16", "c16_over_d", "c32_over_d", "fill_rate_vs_bare_bottom",
                           "inference_full_over_hits"} and all(v > 0 for v in ratios.values())
    assert "| tiny-4 | 2/4 |" in capsys.readouterr().out  # the printed table
