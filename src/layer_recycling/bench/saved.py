"""A ``datasets`` folder written by ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict`` of splits) as table rows.

``datasets`` is imported here only: a user who saved such a folder has it installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DICT_FILE, STATE_FILE = "dataset_dict.json", "state.json"  # what save_to_disk writes for a DatasetDict / a Dataset


def splits_of(path: Path) -> list[str] | None:
    """The split names of a saved ``DatasetDict`` (None for a saved ``Dataset``)."""
    if not (path / DICT_FILE).is_file():
        return None
    splits = json.loads((path / DICT_FILE).read_text()).get("splits")
    if not isinstance(splits, list) or not splits:
        raise ValueError(f"{path / DICT_FILE} names no splits; expected the folder DatasetDict.save_to_disk wrote")
    return splits


def _check_folder(path: Path) -> None:
    if not (path / DICT_FILE).is_file() and not (path / STATE_FILE).is_file():
        raise ValueError(f"{path} is a folder without {DICT_FILE} or {STATE_FILE}; expected a datasets folder "
                         f"written by save_to_disk, or a .csv/.tsv/.jsonl file: pass one of those")


def load(path: Path, split: str | None = None):
    """(the saved ``Dataset`` at ``path`` - of a ``DatasetDict``, its ``split``, default ``train`` - and where it
    is, in words, for messages)."""
    _check_folder(path)
    splits, split_name = splits_of(path), split or "train"
    if splits is None and split is not None:
        raise ValueError(f"{path} holds one Dataset, not a DatasetDict: it has no split {split!r}; pass the folder "
                         f"without a split")
    if splits is not None and split_name not in splits:
        raise ValueError(f"{path} has the splits {splits} and no {split_name!r}; expected a 'train' split for "
                         f"training: save the training rows under 'train'")
    folder = path / split_name if splits is not None else path
    where = f"{path} split {split_name}" if splits is not None else str(path)
    if not json.loads((folder / STATE_FILE).read_text()).get("_data_files"):  # datasets cannot load it either
        raise ValueError(f"{where} holds no rows; expected one example per row: save the examples in it")
    try:
        import datasets
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"{path} is a datasets folder (save_to_disk) and reading it needs the datasets "
                                  f"package: pip install datasets") from None
    loaded = datasets.load_from_disk(str(path))
    return (loaded[split_name] if splits is not None else loaded), where


def saved_rows(path: Path, split: str | None = None
               ) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, list[str]]]:
    """(where, row) per example of the saved folder, and ``{column: label names}`` of its ``ClassLabel`` columns."""
    ds, where = load(path, split)
    rows = [(f"{where} row {i}", row) for i, row in enumerate(ds)]
    return rows, _class_names(ds)


def _class_names(ds) -> dict[str, list[str]]:
    return {name: list(f.names) for name, f in ds.features.items() if hasattr(f, "names")}
