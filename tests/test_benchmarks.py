"""benchmarks/gpu_check.py runs unchanged on a CPU with tiny sizes (--smoke): the script a lent GPU will run; and
benchmarks/device_batches.py measures what crosses to a device."""

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
    assert set(ratios) == {"a_over_c16", "b_over_c16", "c16_over_d", "c8_over_d", "c32_over_d",
                           "fill_rate_vs_bare_bottom", "inference_full_over_hits"}
    assert all(v > 0 for v in ratios.values())
    assert "| tiny-4 | 2/4 |" in capsys.readouterr().out  # the printed table


def test_device_batches_cross_at_their_stored_size(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("device_batches", None)
    import device_batches

    out = device_batches.main(["--entries", "8", "--tokens", "4", "--hidden", "8", "--batch", "4", "--rounds", "1",
                               "--out", str(tmp_path / "d.json")])
    r = json.loads((tmp_path / "d.json").read_text())["results"]
    assert r == out["results"] and set(r) == {"float32", "float16", "bfloat16", "int8"}
    mib = 4 * 4 * 8 * 4 / 2**20  # a batch of 4 entries of 4 x 8, as float32
    assert all(x["decoded_mib"] == mib for x in r.values())
    assert r["float32"]["crossing_mib"] == mib
    assert r["float16"]["crossing_mib"] == r["bfloat16"]["crossing_mib"] == mib / 2
    # codes, and per token a side record of 9 float32: its scale, its 4 kept values and their columns
    assert r["int8"]["crossing_mib"] == mib / 4 + 4 * 4 * 9 * 4 / 2**20
    assert "| int8 |" in capsys.readouterr().out


def test_int8_error_measures_the_earlier_int8_against_the_one_that_keeps_outliers(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("int8_error", None)
    import int8_error

    out = int8_error.main(["--entries", "2", "--tokens", "20", "--hidden", "32", "--channels", "2", "--no-minilm",
                           "--out", str(tmp_path / "e.json")])
    r = out["results"]["planted, 2 outlier channels"]
    assert r["old int8"]["tokens_lost"] >= 4 and r["int8"]["tokens_lost"] == 0  # tokens 0 and 16 of each, at least
    assert r["int8"]["max_error"] < 0.05 < 1.0 < r["old int8"]["max_error"]
    assert (r["old int8"]["bytes_per_token"], r["int8"]["bytes_per_token"]) == (32 + 4, 32 + 36)
