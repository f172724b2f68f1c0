"""A user's labeled texts as tables: CSV/TSV/JSONL files, and ``datasets`` folders written by ``save_to_disk``.

``datasets`` is imported only to read such a folder: a user who saved one has it installed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Any

from .sources import existing_file, read_utf8

_INTEGER = re.compile(r"-?\d+")


@dataclasses.dataclass(frozen=True)
class Columns:
    """Which columns of a user's table hold the text, an optional second text, and the label."""

    text: str = "text"
    pair: str | None = None  # a second text (sentence pairs: NLI, paraphrase); None for single texts
    label: str = "label"

    def role(self, name: str) -> str:
        """What column ``name`` holds, in words."""
        return {self.text: "the text", self.pair: "the second text", self.label: "the label"}[name]

    def flag(self, name: str) -> str:
        """How a user names the column that holds ``name``: the CLI flag and the Python argument."""
        flag = {self.text: "text", self.pair: "text-pair", self.label: "label"}[name]
        return f"--{flag}-column (in Python: {flag.replace('-', '_')}_column=)"


def _column(row: dict[str, Any], name: str, where: str, columns: Columns) -> Any:
    if name not in row:
        raise ValueError(f"{where} has no column {name!r} (columns found: {sorted(k for k in row if k)}); expected "
                         f"{columns.role(name)} there: name its column with {columns.flag(name)}")
    if row[name] is None:
        raise ValueError(f"{where} has no value in column {name!r}; expected every row to fill it: fix or drop "
                         f"the row")
    return row[name]


def _delimited_rows(path: Path, delimiter: str) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""), delimiter=delimiter)
    if reader.fieldnames is None:
        raise ValueError(f"{path.name} is empty; expected a header row naming the columns")
    rows = [(f"{path} line {reader.line_num}", row) for row in reader]
    for where, row in rows:
        if None in row:  # DictReader keeps the fields beyond the header under None
            raise ValueError(
                f"{where} has {len(reader.fieldnames) + len(row[None])} fields, but the header names "
                f"{len(reader.fieldnames)} ({', '.join(reader.fieldnames)}): a text holding the delimiter "
                f"{delimiter!r} must be quoted (\"a gripping, moving film\"), as csv writers do. Quote it, or "
                f"drop the extra fields"
            )
    if not rows:
        raise ValueError(f"{path} holds only a header row ({', '.join(reader.fieldnames)}) and no examples; "
                         f"expected one example per row below it: add rows, or pass the file that holds them")
    return rows


def _jsonl_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for line_no, line in enumerate(read_utf8(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path.name} line {line_no} is not valid JSON ({err.msg}); "
                             f"expected one JSON object per line") from None
        if not isinstance(row, dict):
            raise TypeError(f"{path.name} line {line_no} holds a {type(row).__name__}; "
                            f"expected a JSON object per line")
        rows.append((f"{path} line {line_no}", row))
    if not rows:
        raise ValueError(f"{path} holds no JSON lines; expected one JSON object per example, one per line")
    return rows


def _label_name(value: Any, where: str) -> str:
    # bool is an int subclass, but a true/false label is far more likely a mistake than a class id.
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ValueError(f"{where} has label {value!r}; expected a non-empty string or an integer")
    return str(value)


def _text(row: dict[str, Any], name: str, where: str, columns: Columns) -> str:
    text = _column(row, name, where, columns)
    if not isinstance(text, str):
        raise TypeError(f"{where} has text {text!r}; expected a string")
    return text


def _table_rows(path: Path, split: str | None) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, list[str]]]:
    """A table's rows as (where, row) and ``{column: names}`` of its ClassLabel columns, from a file or folder."""
    if path.is_dir():
        return saved_rows(path, split)
    readers = {".csv": lambda p: _delimited_rows(p, ","), ".tsv": lambda p: _delimited_rows(p, "\t"),
               ".jsonl": _jsonl_rows}
    path = existing_file(path)
    if path.suffix.lower() not in readers:
        raise ValueError(f"cannot read {path.name!r}: extension {path.suffix!r} is not one of "
                         f"{sorted(readers)}; convert the file or rename it if the format matches")
    return readers[path.suffix.lower()](path), {}


def read_labeled_texts(path: str | Path, columns: Columns = Columns(), split: str | None = None
                       ) -> tuple[list[tuple[str | tuple[str, str], str]], list[str] | None]:
    """(text, label name) rows of a .csv/.tsv/.jsonl file or a ``datasets`` folder (``save_to_disk``), in order,
    and the label names the folder declares (None for files). With ``columns.pair`` a text is a (text, pair)."""
    path = Path(path)
    rows, classes = _table_rows(path, split)
    declared = classes.get(columns.label)
    out = []
    for where, row in rows:
        text = _text(row, columns.text, where, columns)
        if columns.pair is not None:
            text = (text, _text(row, columns.pair, where, columns))
        label = _column(row, columns.label, where, columns)
        if declared is not None and type(label) is int and 0 <= label < len(declared):
            label = declared[label]  # a ClassLabel id: its name
        label = _label_name(label, where)
        if declared is not None and label not in declared:
            raise ValueError(f"{where} has label {label}; expected one of its ClassLabel's names {declared} or ids "
                             f"0..{len(declared) - 1} (-1 marks an unlabeled row): drop the rows without a label")
        out.append((text, label))
    return out, declared


def read_text_pairs(path: str | Path, columns: Columns, split: str | None = None) -> list[tuple[str, str]]:
    """(query, positive) rows of a .csv/.tsv/.jsonl file or a ``datasets`` folder, in order: ``columns.text``
    and ``columns.pair`` hold the two texts (retrieval pairs: a question and its answer)."""
    rows, _ = _table_rows(Path(path), split)
    return [(_text(row, columns.text, where, columns), _text(row, columns.pair, where, columns)) for where, row in rows]


def read_text_labels(path: str | Path, text_column: str = "text", label_column: str = "label",
                     pair_column: str | None = None, split: str | None = None
                     ) -> tuple[list[tuple[str | tuple[str, str], int]], list[str]]:
    """Read (text, label id) pairs from a .csv, .tsv or .jsonl file, or a ``datasets`` folder saved with
    ``save_to_disk`` (``split`` picks a split of a ``DatasetDict``; default ``train``).

    Label ids follow the label names a folder declares (a ``ClassLabel``), else the sorted names; names that
    are all integers sort numerically, so labels 0..9 keep their own ids. With ``pair_column`` each text is a
    ``(text, second text)`` tuple.

    Returns:
        ``(examples, names)``: examples in file order, and ``names[i]`` the label with id ``i``.

    Raises:
        FileNotFoundError: if ``path`` is neither a file nor a folder.
        ValueError: for an unknown extension, a file with no examples or not in UTF-8, a missing column or
            value, bad JSON or a bad label.
        TypeError: for a JSONL line that is not an object, or a text that is not a string.
    """
    rows, names = read_labeled_texts(path, Columns(text_column, pair_column, label_column), split)
    if names is None:
        names = sorted({label for _, label in rows})
        if all(_INTEGER.fullmatch(n) for n in names):
            names.sort(key=int)
    ids = {name: i for i, name in enumerate(names)}
    return [(text, ids[label]) for text, label in rows], names


# --- datasets folders (save_to_disk) ----------------------------------------------------------------

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


def load_saved(path: Path, split: str | None = None):
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
    ds, where = load_saved(path, split)
    rows = [(f"{where} row {i}", row) for i, row in enumerate(ds)]
    return rows, _class_names(ds)


def _class_names(ds) -> dict[str, list[str]]:
    return {name: list(f.names) for name, f in ds.features.items() if hasattr(f, "names")}
