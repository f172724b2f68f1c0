"""The ``recycle`` command end to end on tiny local models and fixture files, and its errors."""

from __future__ import annotations

import json
import random

import pytest

from layer_recycling.bench.reporting import REQUIRED
from layer_recycling.cli import main


@pytest.fixture
def reviews(tmp_path):
    rng = random.Random(0)
    lines = ["text,label"]
    for i in range(48):
        label = i % 2
        words = rng.choices(["good", "great", "fun"] if label else ["bad", "awful", "boring"], k=3)
        lines.append(f"the film was {' '.join(words)},{'pos' if label else 'neg'}")
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def conll(tmp_path):
    rng = random.Random(0)
    sentences = []
    for _ in range(30):
        name, city = rng.choice(["john", "mary"]), rng.choice(["paris", "london"])
        sentences.append(f"{name}\tB-person\nlives\tO\nin\tO\n{city}\tB-geo-loc\n.\tO\n")
    path = tmp_path / "ner.conll"
    path.write_text("\n".join(sentences))
    return path


@pytest.fixture
def squad(tmp_path):
    data = []
    for i in range(12):
        name, city = ["john", "mary"][i % 2], ["paris", "london"][i % 3 % 2]
        context = f"{name} lives in {city} . the film was good ."
        data.append({"paragraphs": [{"context": context, "qas": [
            {"id": f"q{i}", "question": f"where {name} lives ?",
             "answers": [{"text": city, "answer_start": context.index(city)}]}]}]})
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": data}))
    return path


def _bench(tmp_path, model, task, dataset, *extra):
    out = tmp_path / "out"
    code = main(["bench", "--task", task, "--dataset", str(dataset), "--model", str(model), "--epochs", "1",
                 "--levels", "0,0.5,1", "--codecs", "int8", "--max-length", "24", "--out", str(out), *extra])
    assert code == 0
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    return out, results


def test_bench_seq_cls_writes_results_report_and_plot(tmp_path, tiny_model_dir, reviews, capsys):
    out, results = _bench(tmp_path, tiny_model_dir, "seq-cls", reviews)
    labels = {r["label"] for r in results}
    assert labels == {"full", "frozen 50%", "recycled 0%", "recycled 50%", "recycled 100%", "recycled+lora 50%",
                      "recycled 50% int8"}
    for r in results:
        assert set(REQUIRED) <= r.keys() and r["metric"] == "accuracy" and 0 <= r["score"] <= 100
        assert r["meta"]["torch"] and r["config"]["train_examples"] == 34  # 38, less 4 held out for validation
        assert r["val_score"] is not None and r["val_scores"][r["metric"]] == r["val_score"]
    recycled = next(r for r in results if r["label"] == "recycled 50%")
    assert recycled["at"] == 2 and recycled["cache_bytes"] > 0 and recycled["fill_s"] > 0
    by_label = {r["label"]: r["fill_from_at"] for r in results}  # each level's fill stacked on the one below
    assert by_label["recycled 0%"] is None and by_label["recycled 50%"] == 0 and by_label["recycled 100%"] == 2
    assert by_label["recycled 50% int8"] == 0 and by_label["frozen 50%"] is None
    lora = next(r for r in results if r["setting"] == "recycled+lora")
    assert lora["trainable_params"] < recycled["trainable_params"]
    assert (out / "report.md").exists() and (out / f"reviews.csv-{tiny_model_dir.name}.png").exists()
    printed = capsys.readouterr().out
    assert "| recycled 50% int8 |" in printed and ("Recommended" in printed or "keep fine-tuning" in printed)


def test_bench_token_classification_scores_entities(tmp_path, tiny_model_dir, conll):
    _, results = _bench(tmp_path, tiny_model_dir, "token-cls", conll, "--no-lora", "--lr", "1e-2", "--epochs", "10")
    assert {r["metric"] for r in results} == {"entity_f1"}
    assert max(r["score"] for r in results) > 0  # a learnable toy task: some setting finds entities


def test_bench_question_answering_on_squad_fixtures(tmp_path, tiny_model_dir, squad):
    _, results = _bench(tmp_path, tiny_model_dir, "qa", squad, "--no-lora")
    assert {r["metric"] for r in results} == {"squad_f1"}
    assert all("exact_match" in r["scores"] for r in results)


def test_qa_holds_out_whole_questions_for_validation(tmp_path, tiny_model_dir, squad):
    from layer_recycling.bench.catalog import load_task

    task = load_task("qa", str(squad), str(tiny_model_dir), max_length=24, val=0.25)
    val_ids = [e["id"] for e in task.val_extra["examples"]]
    whole = load_task("qa", str(squad), str(tiny_model_dir), max_length=24)
    assert len(val_ids) == round(0.25 * len(whole.train)) and {f["example_id"] for f in task.val} == set(val_ids)
    assert len(task.train) == len(whole.train) - len(val_ids)  # one window per question here: none straddles
    assert task.evaluate_val(lambda **b: _qa_logits(b))["squad_f1"] >= 0
    _, results = _bench(tmp_path, tiny_model_dir, "qa", squad, "--no-lora", "--val", "0.25")
    assert all(r["val_score"] is not None for r in results)


def _qa_logits(batch):
    import torch
    from types import SimpleNamespace

    shape = batch["input_ids"].shape
    return SimpleNamespace(start_logits=torch.zeros(shape), end_logits=torch.zeros(shape))


def test_a_validation_file_replaces_the_held_out_split(tmp_path, tiny_model_dir, reviews):
    from layer_recycling.bench.catalog import load_task

    val = tmp_path / "val.csv"
    val.write_text("text,label\nthe film was great fun,pos\nthe film was great good,pos\nthe film was bad,neg\n")
    task = load_task("seq-cls", str(reviews), str(tiny_model_dir), val=0.1, val_file=str(val), max_length=24)
    assert len(task.train) == 38 and [e["labels"] for e in task.val] == [1, 1, 0]  # ids of the training labels
    only_pos = tmp_path / "pos.csv"
    only_pos.write_text("text,label\nthe film was great fun,pos\n")
    assert [e["labels"] for e in load_task("seq-cls", str(reviews), str(tiny_model_dir), val_file=str(only_pos),
                                           max_length=24).val] == [1]  # by name, not by the file's own ids
    other = tmp_path / "other.csv"
    other.write_text("text,label\nthe film was great fun,neutral\n")
    with pytest.raises(ValueError, match="labels \\['neutral'\\] that the training data does not"):
        load_task("seq-cls", str(reviews), str(tiny_model_dir), val_file=str(other), max_length=24)
    _, results = _bench(tmp_path, tiny_model_dir, "seq-cls", reviews, "--no-lora", "--val-file", str(val))
    assert all(r["config"]["train_examples"] == 38 and r["config"]["val_examples"] == 3 for r in results)


def test_fill_inspect_and_train_from_a_store(tmp_path, tiny_model_dir, reviews, capsys):
    store = tmp_path / "store"
    common = ["--dataset", str(reviews), "--model", str(tiny_model_dir), "--at", "0.5", "--store", str(store)]
    assert main(["fill", *common, "--codec", "float16"]) == 0
    assert main(["inspect", str(store)]) == 0
    assert main(["train", *common, "--epochs", "1", "--save", str(tmp_path / "saved")]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and (tmp_path / "saved" / "config.json").exists()


def test_inspect_prints_the_store_info(tmp_path, tiny_model_dir, reviews, capsys):
    store = tmp_path / "store"
    main(["fill", "--dataset", str(reviews), "--model", str(tiny_model_dir), "--store", str(store)])
    capsys.readouterr()
    assert main(["inspect", str(store)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["entries"] == 32 and info["codec"] == "float32"  # 48 reviews, 32 distinct texts


@pytest.mark.parametrize("argv, words", [
    (["inspect", "/nonexistent/store"], "no store at /nonexistent/store"),
    (["report", "/nonexistent/results"], "no results folder"),
    (["bench", "--dataset", "missing.csv", "--model", "minilm"], "missing.csv"),
    (["bench", "--model", "/nowhere"], "neither a built-in"),
])
def test_bad_paths_exit_2_with_a_message(argv, words, capsys):
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def test_bad_levels_are_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--levels", "0.5,2"])
    assert "fraction in [0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("text, value", [("3", 3), ("1", 1), ("0.5", 0.5), ("1.0", 1.0)])
def test_at_means_what_it_means_in_python(text, value):
    from layer_recycling.cli import parser

    args = parser().parse_args(["fill", "--store", "s", "--at", text])
    assert args.at == value and type(args.at) is type(value)


def test_a_fraction_above_one_is_refused_with_the_fix(capsys):
    with pytest.raises(SystemExit):
        main(["fill", "--store", "s", "--at", "2.5"])
    assert "for a number of blocks pass an integer" in capsys.readouterr().err


def test_help_shows_defaults_and_fill_takes_no_training_options(capsys):
    from layer_recycling.cli import parser

    with pytest.raises(SystemExit):
        parser().parse_args(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.5)" in text and "(default: results/bench)" in text
    with pytest.raises(SystemExit):
        parser().parse_args(["fill", "--store", "s", "--epochs", "3"])
    assert "unrecognized arguments: --epochs" in capsys.readouterr().err


def test_store_and_input_errors_exit_2_with_one_line(tmp_path, tiny_model_dir, reviews, capsys):
    store = tmp_path / "store"
    assert main(["fill", "--dataset", str(reviews), "--model", str(tiny_model_dir), "--store", str(store)]) == 0
    capsys.readouterr()
    fill = ["fill", "--dataset", str(reviews), "--model", str(tiny_model_dir), "--store", str(store)]
    assert main([*fill, "--at", "3"]) == 2  # another split: refused
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "FingerprintMismatch" in errors[0] and "split: stored 2 of 4" in errors[0]
    data = next(store.glob("seg-*.data"))
    data.write_bytes(data.read_bytes()[:-7])  # damage: a segment's data truncated
    assert main(["train", *fill[1:], "--epochs", "1"]) == 2  # training reads the states: the damage is found
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "StoreCorrupted" in errors[0] and str(data.name) in errors[0]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["inspect", str(a_file)]) == 2 and "is a file" in capsys.readouterr().err
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / ".cache.json").write_text("{}")
    assert main(["report", str(hidden)]) == 2 and "holds no result files" in capsys.readouterr().err


@pytest.mark.parametrize("text, seeds", [("3", [0, 1, 2]), ("1", [0]), ("0,4", [0, 4]), ("7,", [7])])
def test_seeds_are_a_count_or_a_list(text, seeds):
    from layer_recycling.cli import parser

    assert parser().parse_args(["bench", "--seeds", text]).seeds == seeds
