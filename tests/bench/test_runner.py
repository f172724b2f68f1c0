"""``runner.run`` called directly on a tiny sequence-classification task, one setting at a time."""

from __future__ import annotations

import pytest

from conftest import LABELS, text_examples, text_model
from layer_recycling.bench import runner, tasks
from layer_recycling.bench.settings import SETTINGS, Setting, TrainConfig


def _tiny_task() -> tasks.Task:
    rows = [{**{k: v for k, v in e.items() if k != "label"}, "labels": e["label"]} for e in text_examples(12)]
    return tasks.Task("seq-cls", "tiny", rows[:8], rows[8:], LABELS, "accuracy", tasks.EVALUATORS["seq-cls"])


def _make():
    return text_model("bert", "ForSequenceClassification")


@pytest.mark.parametrize("name", SETTINGS)
def test_run_measures_every_setting(name):
    result = runner.run(_tiny_task(), Setting(name, level=0.5), _make, TrainConfig(epochs=1, batch_size=4))
    assert result.setting == name and result.metric == "accuracy"
    assert 0.0 <= result.score <= 100.0 and len(result.epochs_s) == 1
    assert result.trainable_params > 0
    assert (result.cache_bytes > 0) == (name.startswith("recycled") or name == "head")
    assert (result.at > 0) == (name != "full")
    # the floor: training labels 0, 1, 2, 0, 1, 2, 0, 1 (0 and 1 tie, the first wins), test labels 2, 0, 1, 2
    assert result.constant_score == 25.0 and result.constant_val_score is None  # no validation split here


def test_run_is_reproducible_for_a_seed():
    cfg = TrainConfig(epochs=1, batch_size=4, seed=3)
    a, b = (runner.run(_tiny_task(), Setting("recycled", level=0.5), _make, cfg) for _ in range(2))
    assert a.scores == b.scores


def test_a_level_fills_from_the_store_of_the_level_below():
    lower: dict = {}
    cfg = TrainConfig(epochs=1, batch_size=4)
    first = runner.run(_tiny_task(), Setting("recycled", level=0.25), _make, cfg, lower)
    second = runner.run(_tiny_task(), Setting("recycled", level=0.75), _make, cfg, lower)
    assert first.fill_from_at is None and second.fill_from_at == 1 and sorted(lower) == [1, 3]
