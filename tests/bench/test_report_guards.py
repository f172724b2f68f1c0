"""What the report and the sweep refuse: results of other conditions in one table, runs of no time, a table without
its full baseline, repeated seeds."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import LABELS, text_examples, text_model
from layer_recycling.bench import reporting as rp
from layer_recycling.bench import runner, tasks
from layer_recycling.bench.settings import Setting, TrainConfig

CONFIG = {"epochs": 1, "batch_size": 8, "lr": 5e-5, "lora_lr": 1e-3, "lora_rank": 8, "store_dir": None,
          "train_examples": 14, "val_examples": 2, "test_examples": 4, "sizes": "14 train / 2 validation / 4 test",
          "preprocess": {"truncation": True, "max_length": 128}, "data_fingerprint": "aaaa"}


def _result(label, setting, level, end_to_end, seed=0, **config):
    return {"task": "seq-cls", "dataset": "small.csv", "model": "minilm", "model_source": "minilm",
            "setting": setting, "label": label, "level": level, "at": round(level * 6),
            "codec": None if setting in ("full", "frozen") else "float32", "metric": "accuracy", "score": 80.0,
            "fill_s": 1.0, "train_s_per_epoch": end_to_end, "end_to_end_s": end_to_end, "infer_hits_per_s": 100.0,
            "infer_misses_per_s": 50.0, "cache_bytes": 0, "seed": seed, "meta": {},
            "config": {**CONFIG, "seed": seed, **config}}


def _write(folder, results: dict[str, dict]):
    folder.mkdir(exist_ok=True)
    for name, r in results.items():
        (folder / name).write_text(json.dumps(r))
    return folder


def test_report_refuses_a_table_of_two_configurations_and_names_fields_and_files(tmp_path):
    # bench --levels 0.5 --epochs 1, then bench --levels 0.25 --epochs 3 --max-length 16 into the same folder
    short = {"epochs": 3, "preprocess": {"truncation": True, "max_length": 16}}
    folder = _write(tmp_path / "out", {
        "r50.json": _result("recycled 50%", "recycled", 0.5, 50.0),
        "full.json": _result("full", "full", 0.0, 100.0, **short),
        "r25.json": _result("recycled 25%", "recycled", 0.25, 80.0, **short)})
    with pytest.raises(ValueError, match="mixes results of seq-cls on small.csv with minilm") as err:
        rp.report(folder)
    text = str(err.value)
    assert "epochs: 3 (full.json, r25.json) vs 1 (r50.json)" in text
    assert '"max_length": 128' in text and '"max_length": 16' in text
    assert "a folder of their own" in text and not (folder / "report.md").exists()


@pytest.mark.parametrize("field, other", [("data_fingerprint", "bbbb"), ("model_source", "/elsewhere/minilm")])
def test_report_refuses_data_or_models_that_only_share_a_name(tmp_path, field, other):
    odd = _result("recycled 50%", "recycled", 0.5, 50.0)
    if field == "model_source":
        odd["model_source"] = other
    else:
        odd["config"][field] = other
    folder = _write(tmp_path, {"full.json": _result("full", "full", 0.0, 100.0), "odd.json": odd})
    with pytest.raises(ValueError, match=f"{field}.*\\(full.json\\) vs \"{other}\" \\(odd.json\\)"):
        rp.report(folder)


def test_other_seeds_and_levels_of_one_configuration_share_a_table(tmp_path):
    folder = _write(tmp_path, {"full0.json": _result("full", "full", 0.0, 100.0),
                               "full1.json": _result("full", "full", 0.0, 100.0, seed=1),
                               "r50.json": _result("recycled 50%", "recycled", 0.5, 50.0),
                               "r25.json": _result("recycled 25%", "recycled", 0.25, 80.0, seed=1)})
    text = rp.report(folder)
    assert "| recycled 50% | 3 |" in text and "| recycled 25% | 2 |" in text and "over 2 seeds" in text


def test_report_refuses_results_that_took_no_time(tmp_path):
    # bench --epochs 0: full trains nothing and fills nothing, so every speedup would divide by zero
    folder = _write(tmp_path, {"full.json": _result("full", "full", 0.0, 0.0, epochs=0),
                               "r50.json": _result("recycled 50%", "recycled", 0.5, 1.0, epochs=0)})
    with pytest.raises(ValueError, match=r"runs of seq-cls on small.csv with minilm trained nothing \(full.json: "
                                         r"epochs 0, end to end 0 s; r50.json: epochs 0, end to end 1 s\).*"
                                         r"--epochs 1 or more"):
        rp.report(folder)
    legacy = _result("full", "full", 0.0, 0.0)
    del legacy["config"]  # results written before the config was recorded: the zero time alone tells
    with pytest.raises(ValueError, match="full.json: epochs not recorded, end to end 0 s"):
        rp.report(_write(tmp_path / "legacy", {"full.json": legacy}))


def test_report_without_full_fine_tuning_says_it_is_the_baseline_and_how_to_get_it(tmp_path):
    # what a bench stopped before its last setting (full) leaves
    folder = _write(tmp_path, {"r50.json": _result("recycled 50%", "recycled", 0.5, 50.0),
                               "frozen.json": _result("frozen 50%", "frozen", 0.5, 70.0)})
    with pytest.raises(ValueError, match="no full fine-tuning result for seq-cls on small.csv with minilm "
                                         r"\(it holds frozen 50%, recycled 50%\); full fine-tuning is the baseline"):
        rp.report(folder)
    with pytest.raises(ValueError, match=f"Rerun the same `recycle bench` command with --out {folder}"):
        rp.report(folder)


def test_a_half_written_result_file_is_named(tmp_path):
    (tmp_path / "full.json").write_text('{"task": "seq-cls", "dat')
    with pytest.raises(ValueError, match="full.json is not valid JSON .*delete it"):
        rp.report(tmp_path)


# The sweep, on a tiny random model: it records its conditions and checks the folder before training anything.

def _task(n=12, max_len=12) -> tasks.Task:
    rows = [{"input_ids": e["input_ids"][:max_len], "attention_mask": e["attention_mask"][:max_len],
             "labels": e["label"]} for e in text_examples(n)]
    return tasks.Task("seq-cls", "tiny.csv", rows[:8], rows[8:], LABELS, "accuracy", tasks.EVALUATORS["seq-cls"],
                      preprocess={"truncation": True, "max_length": max_len})


def _make():
    return text_model("bert", "ForSequenceClassification")


SETTINGS = [Setting("full"), Setting("recycled", 0.5)]


def _sweep(out, task=None, model="tiny", cfg=None, seeds=(0,), make=_make):
    return runner.sweep(task or _task(), str(model), make, SETTINGS, cfg or TrainConfig(epochs=1, batch_size=4), out,
                        seeds, echo=lambda line: None)


def _never():
    raise AssertionError("the sweep trained before refusing")


def test_sweep_records_its_conditions_and_refuses_a_folder_of_other_ones(tmp_path):
    model = tmp_path / "a" / "tiny"
    model.mkdir(parents=True)
    out = tmp_path / "out"
    first = _sweep(out, model=model)
    config = first[0].config
    assert first[0].model_source == str(model.resolve())
    assert config["preprocess"] == {"truncation": True, "max_length": 12} and config["epochs"] == 1
    assert config["data_fingerprint"] == runner.data_fingerprint(_task())
    files = sorted(p.name for p in out.glob("*.json"))
    with pytest.raises(ValueError, match=r"already holds results of seq-cls on tiny.csv with tiny made under other "
                                         r"conditions: epochs: 1 \(tiny.csv-tiny-full-seed0.json, .*\) vs 3 "
                                         r"\(this run\).*Pass a new --out folder, or remove those results"):
        _sweep(out, model=model, cfg=TrainConfig(epochs=3, batch_size=4), make=_never)
    other = tmp_path / "b" / "tiny"  # another folder of the same name
    other.mkdir(parents=True)
    with pytest.raises(ValueError, match="model_source"):
        _sweep(out, model=other, make=_never)
    with pytest.raises(ValueError, match="data_fingerprint"):
        _sweep(out, task=_task(max_len=4), model=model, make=_never)  # another max length: other examples
    assert sorted(p.name for p in out.glob("*.json")) == files  # nothing written by the refused sweeps
    _sweep(out, model=model, seeds=(1,))  # another seed of the same configuration joins
    assert "over 2 seeds" in rp.report(out)
    _sweep(tmp_path / "fresh", model=other, cfg=TrainConfig(epochs=3, batch_size=4))  # a new folder takes anything


@pytest.mark.parametrize("seeds, match", [((0, 0), r"seed\(s\) \[0\] listed more than once.*seeds=\[0\]"),
                                          ((0, 1, 1, 2), r"seed\(s\) \[1\] listed more than once.*seeds=\[0, 1, 2\]"),
                                          ((), "expected at least one seed")])
def test_sweep_refuses_repeated_or_no_seeds_before_training(tmp_path, seeds, match):
    with pytest.raises(ValueError, match=match):
        _sweep(tmp_path / "out", seeds=seeds, make=_never)
    assert not (tmp_path / "out").exists()


def test_the_data_fingerprint_follows_the_examples():
    base = runner.data_fingerprint(_task())
    assert runner.data_fingerprint(_task()) == base
    relabelled = _task()
    relabelled.test[0]["labels"] = (relabelled.test[0]["labels"] + 1) % LABELS
    assert runner.data_fingerprint(relabelled) != base
    images = tasks.Task("image-cls", "img", [{"pixel_values": torch.zeros(3, 4, 4), "labels": 0}],
                        [{"pixel_values": torch.ones(3, 4, 4), "labels": 1}], 2, "accuracy",
                        tasks.EVALUATORS["image-cls"], extra={"relevant": [{2, 1}]})
    brighter = tasks.Task(**{**images.__dict__, "test": [{"pixel_values": torch.full((3, 4, 4), 2.0), "labels": 1}]})
    assert runner.data_fingerprint(images) != runner.data_fingerprint(brighter)
