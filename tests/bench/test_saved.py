"""A ``datasets`` folder written by ``save_to_disk``, read as a table: a Dataset, or a DatasetDict's splits."""

from __future__ import annotations

import pytest

from layer_recycling.bench.sources import read_text_labels

datasets = pytest.importorskip("datasets")


def _rows(n: int = 4) -> dict:
    return {"sentence": [f"text {i}" for i in range(n)], "stars": [i % 2 for i in range(n)]}


def test_a_saved_dataset_reads_like_a_file_and_keeps_its_class_names(tmp_path):
    # ClassLabel order is the dataset's own: "pos" is id 0 here, though it sorts after "neg"
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "stars": datasets.ClassLabel(names=["pos", "neg", "meh"])})
    datasets.Dataset.from_dict(_rows(), features=features).save_to_disk(str(tmp_path / "ds"))
    pairs, names = read_text_labels(tmp_path / "ds", text_column="sentence", label_column="stars")
    assert names == ["pos", "neg", "meh"] and pairs == [("text 0", 0), ("text 1", 1), ("text 2", 0), ("text 3", 1)]


def test_a_saved_dataset_dict_reads_its_splits(tmp_path):
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


def test_a_folder_that_is_not_a_saved_dataset_is_refused(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="plain is a folder without dataset_dict.json or state.json; expected a "
                                         "datasets folder written by save_to_disk"):
        read_text_labels(tmp_path / "plain")
    datasets.Dataset.from_dict({"text": [], "label": []}).save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="empty holds no rows"):
        read_text_labels(tmp_path / "empty")
