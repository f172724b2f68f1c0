"""``choose`` on tiny models: the level within the target, its evidence and cost, early stops, the budget, a seed."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from conftest import LABELS, LAYERS, text_examples, text_model
from layer_recycling.bench import tasks
from layer_recycling.bench.choose import (Probe, ReferenceDidNotLearn, choose, constant_scores, fold_scores,
                                          predicted_seconds)
from layer_recycling.bench.tasks import Constant
from layer_recycling.bench.settings import TrainConfig
from layer_recycling.cli import main


def _rows(n: int, seed: int = 1) -> list[dict]:
    return [{**{k: v for k, v in e.items() if k != "label"}, "labels": e["label"]} for e in text_examples(n, seed)]


def _floored(evaluate):
    """``evaluate``, with a constant prediction scored 0: every reference here passes the floor."""
    def scored(task, forward, batch_size):
        return {"accuracy": 0.0} if isinstance(forward, Constant) else evaluate(task, forward, batch_size)
    return scored


def _task(evaluate=tasks.EVALUATORS["seq-cls"], floor: bool = True) -> tasks.Task:
    rows = _rows(30)
    return tasks.Task("seq-cls", "tiny", rows[:12], rows[12:18], LABELS, "accuracy",
                      _floored(evaluate) if floor else evaluate, val=rows[18:])


def _make():
    return text_model("bert", "ForSequenceClassification")  # 4 blocks


def _by_level(task, forward, batch_size):
    """A score that falls 4 points per recycled block: full 80, 25% 76, 50% 72, 75% 68, 100% 64."""
    return {"accuracy": 80.0 - 4 * getattr(forward, "at", 0)}


@pytest.mark.parametrize("max_drop, level, at", [(5, 0.25, 1), (20, 1.0, 4)])
def test_choose_picks_the_most_recycled_level_within_the_target(max_drop, level, at):
    answer = choose(_task(_by_level), _make, max_drop, TrainConfig(epochs=1, batch_size=4), budget=100, echo=print)
    assert (answer.level, answer.at) == (level, at)
    assert answer.chosen.drop == pytest.approx(4 * at) and answer.chosen.verdict == "holds"
    tried = [p.level for p in answer.probes[1:]]
    assert tried == sorted(tried, reverse=True) and tried[-1] == level  # from the most recycled down, then stop
    assert all(p.verdict.startswith("fails") for p in answer.probes[1:-1])
    assert answer.probes[0].verdict == "reference" and answer.cost > 1
    assert f"choice: recycle {round(level * 100)}% ({at} blocks)" in str(answer)


def test_a_level_clearly_past_the_target_at_two_epochs_in_a_row_stops_after_the_second():
    answer = choose(_task(_by_level), _make, 13, TrainConfig(epochs=3, batch_size=4), levels=(0.75, 1.0), budget=100,
                    echo=print)
    first = answer.probes[1]
    assert first.level == 1.0 and first.verdict == "fails after epoch 2 of 3" and len(first.scores) == 2
    assert first.drops == [16, 16] and first.behind == [True, True]
    assert len(answer.chosen.scores) == 3  # the level that holds trained every epoch


def _slow_start(epochs_scored: dict):
    """Full fine-tuning scores 80 after every epoch; a recycled model 40, 60, 70, 71... after its epochs: far behind
    at first, catching up."""
    def evaluate(task, forward, batch_size):
        if not hasattr(forward, "at"):
            return {"accuracy": 80.0}
        n = epochs_scored[id(forward)] = epochs_scored.get(id(forward), 0) + 1  # one call per fold and epoch
        return {"accuracy": (40.0, 60.0, 70.0, 71.0)[min((n - 1) // 2, 3)]}
    return evaluate


def test_a_level_behind_after_its_first_epoch_but_catching_up_trains_every_epoch():
    answer = choose(_task(_slow_start({})), _make, 15, TrainConfig(epochs=3, batch_size=4), levels=(1.0,), folds=2,
                    budget=100, echo=print)
    probe = answer.probes[1]
    assert probe.drops == [40, 20, 10] and probe.behind == [True, True, False]
    assert probe.verdict == "holds" and answer.level == 1.0  # the same-epoch rule alone would have stopped it at 1


def test_the_budget_prediction_is_a_line_through_the_reference_and_the_last_level_that_trained_blocks():
    reference = Probe("full", None, 0, scores=[1.0, 1.0], train_s=120.0)  # 6 blocks, 2 epochs: 60 s an epoch
    assert predicted_seconds([reference], 6, 3, 2) == pytest.approx(60.0)  # before any level: its share, 3 of 6
    head_only = Probe("recycled 100%", 1.0, 6, scores=[1.0, 1.0], train_s=1.0)  # no block trained: not a point
    stopped = Probe("recycled 75%", 0.75, 4, scores=[1.0], train_s=8.0)  # 2 blocks, 1 epoch: 8 s an epoch
    # 8 s an epoch for 2 blocks, 60 for 6: 13 s a block; 3 blocks for 2 epochs: (8 + 13) * 2
    assert predicted_seconds([reference, head_only, stopped], 6, 3, 2) == pytest.approx(42.0)
    assert predicted_seconds([reference, head_only], 6, 3, 2) == pytest.approx(60.0)


def test_no_level_within_the_target_answers_full_fine_tuning():
    def worse(task, forward, batch_size):
        return {"accuracy": 80.0 - (10 if hasattr(forward, "at") else 0)}

    answer = choose(_task(worse), _make, 1, TrainConfig(epochs=1, batch_size=4), levels=(0.5, 1.0), budget=100,
                    echo=print)
    assert answer.level is None and answer.chosen is None and "choice: full fine-tuning" in str(answer)
    assert not answer.untried and "not tried" not in str(answer)  # every level tried: a measured "full"


def test_a_level_that_would_pass_the_budget_is_not_tried_nor_any_below_it():
    answer = choose(_task(_by_level), _make, 5, TrainConfig(epochs=1, batch_size=4), levels=(0.25, 0.5, 1.0),
                    budget=0.5, echo=print)
    assert answer.level is None and [p.label for p in answer.untried] == ["recycled 100%", "recycled 50%",
                                                                           "recycled 25%"]
    assert all(p.verdict.startswith("not tried: about") and not p.scores for p in answer.untried)
    assert "not tried within the budget: recycled 100%, recycled 50%, recycled 25%" in str(answer)


def test_choose_is_reproducible_with_a_seed_and_confirms_on_test():
    cfg = TrainConfig(epochs=1, batch_size=4, seed=3)
    a, b = (choose(_task(), _make, 50, cfg, levels=(1.0,), folds=3, budget=100, confirm=True, echo=print)
            for _ in range(2))
    assert [p.folds for p in a.probes] == [p.folds for p in b.probes] and a.level == b.level == 1.0
    assert set(a.test) == {"full", "recycled 100%"} and all(0 <= v <= 100 for v in a.test.values())
    assert len(a.probes[0].folds[-1]) == 3 and a.chosen.half_width is not None


def test_the_folds_split_the_validation_examples():
    task, model = _task(), _make()
    whole = task.evaluate_val(model)["accuracy"]
    parts = fold_scores(task, model, 2)  # 6 examples: 3 and 3, so the mean of the parts is the whole
    assert sum(parts) / 2 == pytest.approx(whole)


def test_a_reference_no_better_than_a_constant_prediction_is_refused_before_any_fill(monkeypatch):
    filled = []
    monkeypatch.setattr("layer_recycling.bench.choose._fill", lambda *a: filled.append(a))
    stuck = _task(lambda task, forward, batch_size: {"accuracy": 50.0}, floor=False)  # full scores what a constant does
    with pytest.raises(ReferenceDidNotLearn, match=r"ended at 50.00 validation accuracy after 2 epochs \(50.00, "
                                                   r"50.00\), no better than predicting the training examples' most "
                                                   r"frequent label everywhere \(50.00\).*--epochs, now 2.*--lr, now "
                                                   r"0.01"):
        choose(stuck, _make, 1, TrainConfig(epochs=2, batch_size=4, lr=0.01), echo=print)
    assert not filled
    monkeypatch.undo()
    answer = choose(_task(_by_level), _make, 20, TrainConfig(epochs=1, batch_size=4), levels=(1.0,), budget=100)
    assert answer.floor == 0.0 and "constant" in str(answer)  # a reference above the floor: answered, floor shown


def test_the_constant_prediction_is_the_most_frequent_training_label_per_example_or_per_token():
    task = _task(floor=False)  # the real evaluator
    train = [2, 2, 2, 2, 2, 0, 0, 0, 1, 1, 1, 1]  # 2 is the most frequent training label
    task.train = [{**e, "labels": y} for e, y in zip(task.train, train, strict=True)]
    task.val = [{**e, "labels": y} for e, y in zip(task.val, [2, 2, 0, 1, 2, 1])]
    assert constant_scores(task, 1) == [pytest.approx(50.0)] and constant_scores(task, 2) == [
        pytest.approx(100 * 2 / 3), pytest.approx(100 / 3)]  # parts [2, 0, 2] and [2, 1, 1]
    tokens = tasks.Task("token-cls", "tiny", [{"input_ids": [5, 6, 7], "labels": [-100, 1, 1]},
                                              {"input_ids": [5, 6], "labels": [0, -100]}], [], 3, "entity_f1",
                        tasks.EVALUATORS["token-cls"], label_names=["O", "B-x", "I-x"],
                        val=[{"input_ids": [5, 6], "labels": [1, 0]}])
    # per token, "B-x" (twice, the ignored places not counted) beats "O": every token predicted B-x, one entity right
    assert constant_scores(tokens, 1) == [pytest.approx(100 * 2 * 0.5 * 1 / 1.5)]
    images = tasks.Task("image-cls", "tiny", [{"pixel_values": torch.zeros(3, 4, 4), "labels": y} for y in (1, 1, 0)],
                        [], 2, "accuracy", tasks.EVALUATORS["image-cls"],
                        val=[{"pixel_values": torch.ones(3, 4, 4), "labels": y} for y in (1, 0, 1, 1)])
    assert constant_scores(images, 1) == [75.0]
    retrieval = dataclasses.replace(task, kind="retrieval")
    assert constant_scores(retrieval, 1) is None


def test_choose_refuses_a_task_without_validation_examples():
    task = _task()
    task.val = []
    with pytest.raises(ValueError, match="no validation examples; choose picks a level on validation"):
        choose(task, _make, 1, TrainConfig(epochs=1))


def test_recycle_choose_on_the_command_line(tmp_path, tiny_model_dir, capsys):
    csv = tmp_path / "reviews.csv"
    csv.write_text("text,label\n" + "\n".join(f"the film was {['good', 'bad'][i % 2]} {'fun ' * (i % 3)},{i % 2}"
                                              for i in range(40)))
    out = tmp_path / "choice.json"
    # 12 epochs of 6 batches: enough for the tiny model to learn "good" and "bad" (a reference that learned nothing
    # is refused: the test above)
    assert main(["choose", "--dataset", str(csv), "--model", str(tiny_model_dir), "--epochs", "12", "--lr", "1e-3",
                 "--batch-size", "4", "--max-drop", "100", "--levels", "0.5,1", "--val", "0.3", "--budget", "50",
                 "--json", str(out)]) == 0
    assert f"choice: recycle 100% ({LAYERS} blocks)" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["level"] == 1.0 and saved["cost"] > 0 and saved["probes"][0]["verdict"] == "reference"
    assert saved["probes"][0]["scores"][-1] > saved["floor"] == 50.0


def test_retrieval_folds_embed_once_and_split_the_queries(tmp_path, tiny_model_dir):
    import csv

    from layer_recycling.bench.catalog import load_task, model_factory
    from layer_recycling.bench.tables import Columns

    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "answer"])
        for i in range(40):
            writer.writerow([f"who {['lives', 'is'][i % 2]} in {['paris', 'london'][i % 3 % 2]} {'a ' * (i % 7)}",
                             f"{['john', 'mary'][i % 2]} lives in {['paris', 'london'][i % 3 % 2]} {'the ' * (i % 5)}"])
    task = load_task("retrieval", str(path), str(tiny_model_dir), columns=Columns("question", "answer"), val=0.25)
    model = model_factory(str(tiny_model_dir), "retrieval", task.num_labels)()
    calls = []
    counted = lambda **batch: calls.append(1) or model(**batch)  # noqa: E731
    parts = fold_scores(task, counted, 2)
    queries = len(task.val_extra["queries"])
    assert len(parts) == 2 and len(calls) == -(-len(task.val) // 64)  # one pass over the texts
    whole = task.evaluate_val(model)["mrr@10"]
    sizes = [len(range(i, queries, 2)) for i in range(2)]
    assert sum(p * n for p, n in zip(parts, sizes)) / queries == pytest.approx(whole, abs=1e-6)


def test_a_replay_of_a_runs_record_gives_its_answer_and_decides_another_target(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import choose_replay

    answer = choose(_task(_by_level), _make, 9, TrainConfig(epochs=1, batch_size=4), levels=(0.5, 1.0), budget=100,
                    echo=print).to_dict()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "tiny-9.json").write_text(json.dumps(answer))
    (tmp_path / "old" / "tiny-1.json").write_text(json.dumps({**answer, "max_drop": 1.0}))  # a record made at 9
    monkeypatch.setattr("sys.argv", ["choose_replay.py", str(tmp_path / "old"), "--out", str(tmp_path / "new"),
                                     "--budget", "100", "--levels", "0.5,1"])
    choose_replay.main()
    assert "needs a run" not in capsys.readouterr().out
    same = json.loads((tmp_path / "new" / "tiny-9.json").read_text())
    assert same["level"] == answer["level"] == 0.5 and same["cost"] == pytest.approx(answer["cost"])
    assert [(p["label"], p["verdict"], p["drops"]) for p in same["probes"]] == [
        (p["label"], p["verdict"], p["drops"]) for p in answer["probes"]]
    stricter = json.loads((tmp_path / "new" / "tiny-1.json").read_text())  # 50% drops 8 points: past 1
    assert stricter["level"] is None and [p["verdict"] for p in stricter["probes"]] == ["reference", "fails", "fails"]
