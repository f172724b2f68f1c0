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
    # a tiny random model on 34 examples: a recommendation, none, or none because full fine-tuning learned nothing
    assert "| recycled 50% int8 |" in printed and any(
        said in printed for said in ("Recommended", "keep fine-tuning", "it learned nothing"))


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
    examples = {e["id"]: e for e in task.val_extra["examples"]}
    oracle = _oracle(task.val, examples)
    assert task.evaluate_val(oracle, batch_size=len(task.val)) == {"exact_match": 100.0, "squad_f1": 100.0}
    assert task.evaluate_val(lambda **b: _qa_logits(b))["squad_f1"] < 100.0  # a span at position 0 misses them
    _, results = _bench(tmp_path, tiny_model_dir, "qa", squad, "--no-lora", "--val", "0.25")
    assert all(r["val_score"] is not None for r in results)


def _oracle(features, examples):
    """A QA model whose logits peak on the tokens of each feature's gold answer: it must score 100."""
    import torch
    from types import SimpleNamespace

    def forward(**batch):
        start, end = torch.full(batch["input_ids"].shape, -1e4), torch.full(batch["input_ids"].shape, -1e4)
        for i, f in enumerate(features):
            answers = examples[f["example_id"]]["answers"]
            first = answers["answer_start"][0]
            last = first + len(answers["text"][0])
            for j, span in enumerate(f["offset_mapping"]):
                if span is not None and span[0] == first:
                    start[i, j] = 1e4
                if span is not None and span[1] == last:
                    end[i, j] = 1e4
        return SimpleNamespace(start_logits=start, end_logits=end)

    return forward


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


def test_a_saved_model_carries_its_tokenizer_and_a_folder_without_one_is_refused(tmp_path, tiny_model_dir, reviews,
                                                                                   capsys):
    """``train --save`` once wrote no tokenizer; transformers then built one with no vocabulary from the folder,
    every word became [UNK], and texts of equal length shared one entry."""
    common = ["--dataset", str(reviews), "--at", "0.5", "--epochs", "1"]
    assert main(["train", *common, "--model", str(tiny_model_dir), "--store", str(tmp_path / "a"),
                 "--save", str(tmp_path / "saved")]) == 0
    assert "saved the model and its tokenizer" in capsys.readouterr().out
    assert main(["fill", "--dataset", str(reviews), "--model", str(tmp_path / "saved"),
                 "--store", str(tmp_path / "b")]) == 0
    assert "added 32 entries" in capsys.readouterr().out  # 32 distinct texts, as with the original folder
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bare / f).write_bytes((tmp_path / "saved" / f).read_bytes())
    assert main(["fill", "--dataset", str(reviews), "--model", str(bare), "--store", str(tmp_path / "c")]) == 2
    assert "has no tokenizer" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_train_with_a_seed_is_reproducible(tmp_path, tiny_model_dir, reviews, capsys):
    scores = []
    for run in range(2):
        assert main(["train", "--dataset", str(reviews), "--model", str(tiny_model_dir), "--store",
                     str(tmp_path / f"s{run}"), "--epochs", "1", "--seed", "3"]) == 0
        scores.append(capsys.readouterr().out.split("; ")[-1])
    assert scores[0] == scores[1]


@pytest.mark.parametrize("argv, words", [
    (["bench", "--epochs", "0"], "argument --epochs: 0: expected at least 1"),
    (["bench", "--batch-size", "0"], "0: expected at least 1"),
    (["bench", "--train", "-1"], "-1: expected at least 1"),
    (["bench", "--max-length", "0"], "0: expected at least 1"),
    (["bench", "--val", "1.5"], "1.5: expected a fraction in [0, 1)"),
    (["bench", "--frozen-level", "1.5"], "1.5: expected a fraction in [0, 1]"),
    (["bench", "--codecs", "foo"], "unknown codecs ['foo']"),
    (["bench", "--max-drop", "nan"], "nan: expected a finite number of 0 or more"),
    (["bench", "--lr", "0"], "expected a finite number above 0"),
    (["bench", "--seeds", "0,0"], "a seed is listed twice"),
    (["bench", "--seeds", "-1"], "expected a count (3: seeds 0, 1, 2), the seed 0"),
    (["fill", "--store", "s", "--at", "-1"], "expected 0 or more blocks"),
])
def test_numeric_options_are_checked_before_any_work(argv, words, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert words in capsys.readouterr().err


def test_text_data_with_one_label_or_an_unquoted_delimiter_or_an_image_model_is_refused(tmp_path, tiny_model_dir,
                                                                                        capsys):
    one = tmp_path / "one.csv"
    one.write_text("text,label\n" + "".join(f"the film was good {i},pos\n" for i in range(6)))
    commas = tmp_path / "commas.csv"
    commas.write_text("text,label\nthe film was good,pos\na gripping, moving film,pos\nbad,neg\n")
    cases = [(["--dataset", str(one), "--model", str(tiny_model_dir)], "holds one label in column 'label' ('pos')"),
             (["--dataset", str(commas), "--model", str(tiny_model_dir)], "commas.csv line 3 has 3 fields, but the "
              "header names 2 (text, label): a text holding the delimiter ',' must be quoted"),
             (["--dataset", str(commas), "--model", "efficientnet-lite0"], "is an image model"),
             (["--task", "image-cls", "--dataset", "fashion_mnist", "--model", "minilm"], "is a text model"),
             (["--task", "retrieval", "--dataset", "faq", "--text-column", "question"], "the built-in 'faq' has its "
              "own")]
    for argv, words in cases:
        assert main(["fill", *argv, "--store", str(tmp_path / "s")]) == 2
        assert words in capsys.readouterr().err, argv


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


def test_the_task_option_names_and_takes_the_harness_kinds_and_refuses_others(capsys):
    from layer_recycling.bench.tasks import KINDS
    from layer_recycling.cli import TASKS, parser

    assert sorted(TASKS.replace(" or ", ", ").split(", ")) == sorted(KINDS)  # the help lists what the parser takes
    assert [parser().parse_args(["fill", "--store", "s", "--task", k]).task for k in KINDS] == list(KINDS)
    with pytest.raises(SystemExit):
        parser().parse_args(["train", "--store", "s", "--task", "summarize"])
    assert "--task 'summarize': expected one of seq-cls" in capsys.readouterr().err


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
    assert "fill a new --store" in errors[0]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["inspect", str(a_file)]) == 2 and "is a file" in capsys.readouterr().err
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / ".cache.json").write_text("{}")
    assert main(["report", str(hidden)]) == 2 and "holds no result files" in capsys.readouterr().err


@pytest.mark.parametrize("text, seeds", [("3", [0, 1, 2]), ("1", [0]), ("0", [0]), ("0,4", [0, 4]), ("7,", [7])])
def test_seeds_are_a_count_or_a_list(text, seeds):
    from layer_recycling.cli import parser

    assert parser().parse_args(["bench", "--seeds", text]).seeds == seeds


# --- a user's own data: fill -> train -> bench from the command line alone --------------------------------------

def _review_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.choices(["good", "great", "fun"] if i % 2 else ["bad", "awful", "boring"], k=3)
        rows.append((f"the film was {' '.join(words)}", "pos" if i % 2 else "neg"))
    return rows


def _quick_bench(dataset, model, out, *extra) -> None:
    """The smallest sweep: full, frozen and recycled at 50%, one epoch."""
    assert main(["bench", "--dataset", str(dataset), "--model", str(model), "--levels", "0.5", "--codecs", "",
                 "--no-lora", "--epochs", "1", "--max-length", "24", "--val", "0.25", "--out", str(out), *extra]) == 0


def test_fill_train_bench_on_a_user_csv_and_python_opens_the_store(tmp_path, tiny_model_dir, capsys):
    import transformers

    import layer_recycling as lr

    rows = _review_rows(60)
    path = tmp_path / "mine.csv"
    path.write_text("id,review,sentiment\n" + "".join(f"{i},{t},{y}\n" for i, (t, y) in enumerate(rows)))
    columns = ["--text-column", "review", "--label-column", "sentiment"]
    store = tmp_path / "store"
    common = ["--dataset", str(path), "--model", str(tiny_model_dir), "--at", "2", "--store", str(store),
              "--max-length", "24", *columns]
    assert main(["fill", *common]) == 0
    assert main(["train", *common, "--epochs", "1"]) == 0
    _quick_bench(path, tiny_model_dir, tmp_path / "out", *columns)
    printed = capsys.readouterr().out
    assert "preprocess={'truncation': True, 'max_length': 24}" in printed and "accuracy" in printed
    assert "validation drop" in (tmp_path / "out" / "report.md").read_text()
    # The Python API opens the store the CLI filled: same fingerprint, same keys, nothing left to compute.
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    rec = lr.recycle(model, at=2, store=lr.DiskStore(store), tokenizer=tok,
                     preprocess={"truncation": True, "max_length": 24})
    examples = [{**tok(t, truncation=True, max_length=24), "label": int(y == "pos")} for t, y in rows]
    assert len(rec.store) > 0 and rec.fill(examples) == 0


def test_fill_train_bench_on_a_saved_dataset_folder(tmp_path, tiny_model_dir, capsys):
    datasets = pytest.importorskip("datasets")

    def split(n, seed):
        rows = _review_rows(n, seed)
        return datasets.Dataset.from_dict(
            {"premise": [t for t, _ in rows], "hypothesis": ["the film was good"] * n,
             "label": [int(y == "neg") for _, y in rows]},
            features=datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                        "label": datasets.ClassLabel(names=["entailment", "contradiction"])}))

    folder = tmp_path / "nli"
    datasets.DatasetDict({"train": split(40, 0), "test": split(10, 1)}).save_to_disk(str(folder))
    columns = ["--text-column", "premise", "--text-pair-column", "hypothesis"]
    store = tmp_path / "store"
    common = ["--dataset", str(folder), "--model", str(tiny_model_dir), "--store", str(store), "--max-length", "24",
              *columns]
    assert main(["fill", *common]) == 0
    assert main(["train", *common, "--epochs", "1"]) == 0
    _quick_bench(folder, tiny_model_dir, tmp_path / "out", *columns)
    results = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json")]
    assert {r["config"]["test_examples"] for r in results} == {10}  # the DatasetDict's own test split
    assert {r["config"]["train_examples"] + r["config"]["val_examples"] for r in results} == {40}
    capsys.readouterr()
    assert main(["inspect", str(store)]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] > 0


@pytest.mark.parametrize("content, found", [
    (b"text,label\n", "holds only a header row (text, label) and no examples; expected one example per row"),
    (b"text,label\nfine,pos\ncaf\xe9,neg\n", "line 3: byte 0xe9 is not UTF-8; expected a UTF-8 text file: re-save"),
    (b"review,label\nfine,pos\n", "line 2 has no column 'text' (columns found: ['label', 'review']); expected the "
                                  "text there: name its column with --text-column"),
])
def test_data_errors_exit_2_with_one_line_naming_the_file(tmp_path, content, found, capsys):
    path = tmp_path / "mine.csv"
    path.write_bytes(content)
    data = ["--dataset", str(path), "--model", "minilm"]
    for argv in (["fill", *data, "--store", str(tmp_path / "s")], ["train", *data, "--store", str(tmp_path / "s")],
                 ["bench", *data, "--no-lora"]):
        assert main(argv) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and f"{path}" in lines[0] and found in lines[0], lines


def test_columns_on_a_task_without_them_are_refused(tmp_path, conll, capsys):
    assert main(["fill", "--task", "token-cls", "--dataset", str(conll), "--text-column", "words",
                 "--store", str(tmp_path / "s")]) == 2
    assert "task 'token-cls' reads CoNLL files" in capsys.readouterr().err


def test_a_store_in_a_read_only_directory_trains_but_refuses_to_fill(tmp_path, tiny_model_dir, reviews, capsys,
                                                                      monkeypatch):
    import os
    from pathlib import Path

    store = tmp_path / "store"
    common = ["--model", str(tiny_model_dir), "--store", str(store)]
    assert main(["fill", "--dataset", str(reviews), *common]) == 0
    # Root writes through file modes, so the directory is made read-only where the store looks: os.access (the
    # real thing, as an unprivileged user: tests/stores/test_disk.py::test_a_finished_store_opens_from_a_read_only_*)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: (not (mode & os.W_OK and Path(p).is_relative_to(store))
                                                             and real(p, mode, **kw)))
    capsys.readouterr()
    assert main(["train", "--dataset", str(reviews), *common, "--epochs", "1"]) == 0  # every state is stored: reads
    more = tmp_path / "more.csv"
    more.write_text("text,label\nthe plot was fun,pos\nthe plot was bad,neg\nthe actor was great,pos\n"
                    "the actor was boring,neg\nthe plot was awful,neg\nthe actor was fun,pos\n")
    assert main(["fill", "--dataset", str(more), *common]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not the progress bars
    assert len(lines) == 1 and "PermissionError" in lines[0] and str(store) in lines[0], lines
    assert "cannot write, so it opened for reading only, as with readonly=True" in lines[0]
    assert main(["fill", "--dataset", str(reviews), *common[:-1], str(store / "new")]) == 2
    assert "cannot create a DiskStore in" in capsys.readouterr().err
