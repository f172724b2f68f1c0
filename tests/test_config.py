"""RecycleConfig: one config for recycle(), JSON round trip, recorded beside a saved model."""

from __future__ import annotations

import json

import pytest

import layer_recycling as lr


def test_recycle_takes_a_config_and_options_override_it(bert):
    config = lr.RecycleConfig(at=1, store_misses=False)
    rec = lr.recycle(bert, config=config, at=3)
    assert rec.at == 3 and rec.recycle_config.store_misses is False and config.at == 1  # the given config is not changed
    assert lr.recycle(bert).at == 2  # default 0.5 of 4 blocks


def test_unknown_options_are_named(bert):
    with pytest.raises(TypeError, match="unknown options \\['levle'\\]"):
        lr.recycle(bert, levle=0.5)
    with pytest.raises(ValueError, match="unknown recycling config fields \\['x'\\]"):
        lr.RecycleConfig.from_dict({"at": 1, "x": 2})


def test_config_round_trips_through_json_with_what_was_recorded(tmp_path):
    config = lr.RecycleConfig(at=0.25, blocks="encoder.layer", preprocess={"max_length": 64}, allow_nonfinite=True)
    path = config.save_pretrained(tmp_path, num_layers=12, codec="float16")
    assert lr.RecycleConfig.from_pretrained(tmp_path) == config
    recorded = json.loads(path.read_text())["recorded"]
    assert recorded["num_layers"] == 12 and recorded["layer_recycling"] == lr.__version__
    assert lr.RecycleConfig.recorded(tmp_path)["codec"] == "float16"
    with pytest.raises(FileNotFoundError, match="recycling_config.json"):
        lr.RecycleConfig.from_pretrained(tmp_path / "elsewhere")
