"""A user's labeled text tables: CSV/TSV/JSONL files and ``save_to_disk`` folders, and what each error says."""

from __future__ import annotations

import json

import pytest

from layer_recycling.bench.sources import read_conll
from layer_recycling.bench.tables import read_text_labels

# --- files -----------------------------------------------------------------------------

def test_csv_with_string_labels(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('text,label,source\n"good, fun",pos,a\nbad,neg,b\nfine,pos,a\n', encoding="utf-8")
    examples, names = read_text_labels(path)
    assert names == ["neg", "pos"]  # sorted names: neg -> 0, pos -> 1
    assert examples == [("good, fun", 1), ("bad", 0), ("fine", 1)]


def test_jsonl_with_int_labels_sorts_numerically(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"sentence": "a", "y": 10}, {"sentence": "b", "y": 2}, {"sentence": "c", "y": 0}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    examples, names = read_text_labels(path, text_column="sentence", label_column="y")
    assert names == ["0", "2", "10"]  # numeric order, not "0" < "10" < "2"
    assert examples == [("a", 2), ("b", 1), ("c", 0)]


def test_tsv(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("label\ttext\n1\tone, with comma\n0\tzero\n", encoding="utf-8")
    assert read_text_labels(path) == ([("one, with comma", 1), ("zero", 0)], ["0", "1"])


def test_text_labels_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at .*nope.csv'; expected an existing data file"):
        read_text_labels(tmp_path / "nope.csv")


def test_text_labels_unknown_extension(tmp_path):
    (tmp_path / "data.parquet").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"extension '.parquet' is not one of \['.csv', '.jsonl', '.tsv'\]"):
        read_text_labels(tmp_path / "data.parquet")


def test_text_labels_missing_column_lists_columns(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("sentence,label\nhi,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"data.csv line 2 has no column 'text' \(columns found: \['label', "
                                         r"'sentence'\]\); expected the text there: name its column with "
                                         r"--text-column \(in Python: text_column=\)"):
        read_text_labels(path)


def test_text_labels_short_row(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,label\nhi\n", encoding="utf-8")
    with pytest.raises(ValueError, match="data.csv line 2 has no value in column 'label'"):
        read_text_labels(path)


@pytest.mark.parametrize("text, error, words", [
    ('{"text": "a", "label": 1.5}\n', ValueError,
     "data.jsonl line 1 has label 1.5; expected a non-empty string or an int"),
    ('{"text": "a", "label": 1}\n{"text": "a", "label": 1\n', ValueError, "data.jsonl line 2 is not valid JSON"),
    ('{"text": 3, "label": 1}\n', TypeError, "data.jsonl line 1 has text 3; expected a string"),
    ('["a", 1]\n', TypeError, "data.jsonl line 1 holds a list; expected a JSON object per line"),
])
def test_text_labels_bad_values(tmp_path, text, error, words):
    path = tmp_path / "data.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(error, match=words):
        read_text_labels(path)


def test_a_row_with_more_fields_than_the_header_is_refused_naming_the_line(tmp_path):
    """An unquoted comma in a text once shifted the columns silently: the text cut, the rest taken as the label."""
    path = tmp_path / "data.csv"
    path.write_text("text,label\nfine,pos\na gripping, moving film,pos\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"data.csv line 3 has 3 fields, but the header names 2 \(text, label\): "
                                         r"a text holding the delimiter ',' must be quoted"):
        read_text_labels(path)


def test_text_labels_empty_csv(tmp_path):
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.csv is empty; expected a header row"):
        read_text_labels(tmp_path / "empty.csv")


def test_a_header_only_file_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"reviews.csv holds only a header row \(text, label\) and no examples; "
                                         r"expected one example per row below it: add rows"):
        read_text_labels(path)
    (tmp_path / "blank.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="blank.jsonl holds no JSON lines; expected one JSON object per example"):
        read_text_labels(tmp_path / "blank.jsonl")


@pytest.mark.parametrize("name, text, line", [
    ("reviews.csv", "text,label\nfine,pos\ncaf\xe9 au lait,neg\n", 3),
    ("reviews.jsonl", '{"text": "fine", "label": 1}\n{"text": "caf\xe9", "label": 0}\n', 2),
    ("ner.conll", "a O\n\ncaf\xe9 B-X\n", 3),
])
def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path, name, text, line):
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))  # \xe9 alone is not UTF-8
    read = read_conll if name.endswith(".conll") else read_text_labels
    with pytest.raises(ValueError, match=rf"{name} line {line}: byte 0xe9 is not UTF-8; expected a UTF-8 text "
                                         rf"file: re-save it as UTF-8"):
        read(path)


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("text,label\nfine,pos\n".encode("utf-8-sig"))
    assert read_text_labels(path) == ([("fine", 0)], ["pos"])


def test_a_pair_column_reads_two_texts_per_example(tmp_path):
    path = tmp_path / "nli.tsv"
    path.write_text("premise\thypothesis\tgold\na cat\tan animal\tyes\na cat\ta car\tno\n", encoding="utf-8")
    assert read_text_labels(path, "premise", "gold", pair_column="hypothesis") == (
        [(("a cat", "an animal"), 1), (("a cat", "a car"), 0)], ["no", "yes"])
    with pytest.raises(ValueError, match=r"has no column 'second' \(columns found: \['gold', 'hypothesis', "
                                         r"'premise'\]\); expected the second text there: name its column with "
                                         r"--text-pair-column"):
        read_text_labels(path, "premise", "gold", pair_column="second")
    with pytest.raises(ValueError, match="expected the label there: name its column with --label-column"):
        read_text_labels(path, "premise", pair_column="hypothesis")


# --- datasets folders (save_to_disk) ---------------------------------------------------------------

@pytest.fixture
def datasets():
    return pytest.importorskip("datasets")  # make test installs it; a user's folder needs it only to be read


def _rows(n: int = 4) -> dict:
    return {"sentence": [f"text {i}" for i in range(n)], "stars": [i % 2 for i in range(n)]}


def test_a_saved_dataset_reads_like_a_file_and_keeps_its_class_names(tmp_path, datasets):
    # ClassLabel order is the dataset's own: "pos" is id 0 here, though it sorts after "neg"
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "stars": datasets.ClassLabel(names=["pos", "neg", "meh"])})
    datasets.Dataset.from_dict(_rows(), features=features).save_to_disk(str(tmp_path / "ds"))
    pairs, names = read_text_labels(tmp_path / "ds", text_column="sentence", label_column="stars")
    assert names == ["pos", "neg", "meh"] and pairs == [("text 0", 0), ("text 1", 1), ("text 2", 0), ("text 3", 1)]
    unlabeled = datasets.Dataset.from_dict({"sentence": ["a"], "stars": [-1]}, features=features)  # as GLUE's test
    unlabeled.save_to_disk(str(tmp_path / "unlabeled"))
    with pytest.raises(ValueError, match=r"unlabeled row 0 has label -1; expected one of its ClassLabel's names "
                                         r"\['pos', 'neg', 'meh'\] or ids 0..2 \(-1 marks an unlabeled row\)"):
        read_text_labels(tmp_path / "unlabeled", text_column="sentence", label_column="stars")


def test_a_saved_dataset_dict_reads_its_splits(tmp_path, datasets):
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["x", "y"]}),
                                   "test": datasets.Dataset.from_dict({"text": ["c"], "label": ["y"]})})
    splits.save_to_disk(str(tmp_path / "dd"))
    assert read_text_labels(tmp_path / "dd") == ([("a", 0), ("b", 1)], ["x", "y"])  # train by default
    assert read_text_labels(tmp_path / "dd", split="test") == ([("c", 0)], ["y"])
    with pytest.raises(ValueError, match=r"dd has the splits \['train', 'test'\] and no 'validation'"):
        read_text_labels(tmp_path / "dd", split="validation")
    with pytest.raises(ValueError, match=r"dd split train row 0 has no column 'review' \(columns found: "
                                         r"\['label', 'text'\]\); expected the text there: name its column with "
                                         r"--text-column"):
        read_text_labels(tmp_path / "dd", text_column="review")


def test_a_folder_that_is_not_a_saved_dataset_is_refused(tmp_path, datasets):
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="plain is a folder without dataset_dict.json or state.json; expected a "
                                         "datasets folder written by save_to_disk"):
        read_text_labels(tmp_path / "plain")
    datasets.Dataset.from_dict({"text": [], "label": []}).save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="empty holds no rows"):
        read_text_labels(tmp_path / "empty")
