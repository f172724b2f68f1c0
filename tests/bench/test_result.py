"""result.py: a run's result is typed, written as the harness always wrote it, and read back from older files."""

from __future__ import annotations

import dataclasses
import json

import pytest

from layer_recycling.bench.result import REQUIRED, Result

# The keys of a result file in the order sweep wrote them before results were typed.
FILE_KEYS = ["setting", "label", "level", "at", "codec", "metric", "score", "scores", "fill_s", "fill_from_at",
             "train_s_per_epoch", "epochs_s", "trained", "end_to_end_s", "infer_hits_per_s", "infer_misses_per_s",
             "cache_bytes", "val_score", "val_scores", "trainable_params", "peak_mem_mb", "task", "dataset", "model",
             "model_source", "seed", "meta", "config", "end_to_end_cpu_s", "cache_entries", "constant_score",
             "constant_val_score"]  # the last four added since
OLD = {"task": "seq-cls", "dataset": "toy", "model": "tiny", "setting": "recycled", "label": "recycled 50%",
       "level": 0.5, "at": 3, "codec": "float16", "metric": "accuracy", "score": 80.0, "fill_s": 1.0,
       "train_s_per_epoch": 2.0, "end_to_end_s": 5.0, "infer_hits_per_s": 100.0, "infer_misses_per_s": 50.0,
       "cache_bytes": 2000, "seed": 1, "meta": {"torch": "2.4"}}  # a file of the first harness: no later fields


def test_a_result_file_keeps_its_keys_and_their_order():
    full = Result.from_json({**OLD, "scores": {"accuracy": 80.0}, "epochs_s": [2.0], "trained": True,
                             "config": {"epochs": 1, "seed": 1}, "model_source": "tiny"})
    assert list(full.to_json()) == FILE_KEYS
    assert {f.name for f in dataclasses.fields(Result)} == set(FILE_KEYS)
    assert Result.from_json(json.loads(json.dumps(full.to_json()))) == full  # a round trip through the file


def test_an_older_file_reads_with_its_later_fields_unset_and_unknown_keys_ignored():
    result = Result.from_json({**OLD, "from_a_later_version": [1, 2]})
    assert (result.label, result.score, result.meta) == ("recycled 50%", 80.0, {"torch": "2.4"})
    assert result.val_score is None and result.config is None and result.scores is None


@pytest.mark.parametrize("drop", ["score", "label"])
def test_a_file_without_a_field_every_result_has_is_refused_naming_it(drop):
    assert drop in REQUIRED
    with pytest.raises(ValueError, match=rf"x.json is not a benchmark result: it lacks \['{drop}'\]"):
        Result.from_json({k: v for k, v in OLD.items() if k != drop}, "x.json")
    with pytest.raises(ValueError, match="lacks"):
        Result.from_json([OLD], "x.json")
