"""Content keys: canonical, order-independent where it should be, equal across processes and hash seeds."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import layer_recycling as lr
from conftest import text_examples
from helpers import padded_batch

SAMPLES = {
    "text": "a café review",
    "bytes": b"\x00\x01raw",
    "int": 7,
    "float": 0.1,
    "none": None,
    "ids": [101, 2023, 102],
    "array": np.arange(12, dtype=np.float32).reshape(3, 4),
    "tensor": torch.arange(6, dtype=torch.int64),
    "bf16": torch.linspace(0, 1, 5, dtype=torch.bfloat16),
    "nested": {"b": [1, (2, 3)], "a": {"x": np.int32(4), "y": "z"}},
}
_PRINT_KEYS = (
    "import numpy as np, torch, layer_recycling as lr; from test_keys import SAMPLES; "
    "print(','.join(lr.digest(v) for v in SAMPLES.values()))"
)


def test_keys_are_equal_across_processes_and_hash_seeds():
    here = ",".join(lr.digest(v) for v in SAMPLES.values())
    children = [subprocess.Popen([sys.executable, "-c", _PRINT_KEYS], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env={**os.environ, "PYTHONHASHSEED": seed,
                                                 "PYTHONPATH": os.path.dirname(__file__)})
                for seed in ("0", "12345")]  # side by side: each spends seconds importing torch
    for child in children:
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0, err[-2000:]
        assert out.strip() == here


def test_equal_content_equal_key():
    assert lr.digest([1, 2, 3]) == lr.digest((1, 2, 3))
    assert lr.digest(np.arange(4)) == lr.digest(torch.arange(4))
    assert lr.digest({"a": 1, "b": 2}) == lr.digest({"b": 2, "a": 1})
    assert lr.digest(torch.arange(4)[::2]) == lr.digest(torch.tensor([0, 2]))  # views hash their content


@pytest.mark.parametrize("a, b", [
    (1, 1.0), (1, True), ("1", 1), ("ab", b"ab"), ([1, 2], [2, 1]), (["ab"], ["a", "b"]),
    (np.zeros(4, np.float32), np.zeros(4, np.float64)), (np.zeros((2, 2)), np.zeros(4)),
    (torch.zeros(3, dtype=torch.float16), torch.zeros(3, dtype=torch.bfloat16)), ({"a": 1}, {"a": 2}),
    ({"a": 1}, [("a", 1)]), (None, "None"), (torch.tensor([1.0]), torch.tensor([1.0 + 2**-23])),
])
def test_different_content_different_key(a, b):
    assert lr.digest(a) != lr.digest(b)


def test_pil_images_key_mode_size_and_pixels():
    Image = pytest.importorskip("PIL.Image")
    img = Image.new("RGB", (4, 3), (10, 20, 30))
    assert lr.digest(img) == lr.digest(img.copy())
    assert lr.digest(img) != lr.digest(img.convert("L"))
    assert lr.digest(img) != lr.digest(Image.new("RGB", (3, 4), (10, 20, 30)))
    other = img.copy()
    other.putpixel((0, 0), (10, 20, 31))
    assert lr.digest(img) != lr.digest(other)


@pytest.mark.parametrize("obj, name", [(object(), "object"), ({"x": {1, 2}}, "set"),
                                       (np.array([object()]), "dtype object")])
def test_unkeyable_objects_name_their_type_and_the_key_option(obj, name):
    with pytest.raises(TypeError, match=name) as info:
        lr.digest(obj)
    assert "key=" in str(info.value)


def test_palette_images_key_their_palette():
    Image = pytest.importorskip("PIL.Image")
    a = Image.new("P", (2, 2), 0)
    b = a.copy()
    a.putpalette([255, 0, 0] * 256)
    b.putpalette([0, 0, 255] * 256)
    assert a.tobytes() == b.tobytes()  # the same indices, other colours
    assert lr.digest(a) != lr.digest(b)


def test_keys_ignore_padding_and_container_type(bert):
    examples = text_examples()
    rec = lr.recycle(bert, at=2).eval()
    rec.fill([{k: torch.tensor(v) for k, v in e.items()} for e in examples], progress=False)
    with torch.no_grad():
        rec(**padded_batch(examples, extra=5))
    assert rec.stats.hits == len(examples) and rec.stats.misses == 0
