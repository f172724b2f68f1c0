"""The Lightning and accelerate examples train the recycled top from the store (tiny model, seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("script, framework", [("lightning_train.py", "lightning"), ("accelerate_train.py", "accelerate")])
def test_example_trains_from_the_store(script, framework):
    pytest.importorskip(framework)
    out = subprocess.run([sys.executable, str(EXAMPLES / script), "--model", "tiny", "--examples", "64"],
                         capture_output=True, text=True, timeout=240, cwd=EXAMPLES,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "the bottom ran 0 times after the fill" in out.stdout
    assert "eval mode" not in out.stderr  # the bottom's eval mode is by design: no warning about it


def test_the_qdrant_faq_example_trains_recycled_and_answers_from_qdrant(tiny_model_dir, tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("qdrant_client")
    words = ["paris", "london", "john", "mary", "film", "plot", "actor", "city"]
    pairs = tmp_path / "faq.jsonl"
    pairs.write_text("".join(json.dumps({"q": f"who is {w} ?", "a": f"{w} is a {w} ."}) + "\n" for w in words))
    sys.path.insert(0, str(EXAMPLES))
    try:
        import qdrant_faq
    finally:
        sys.path.remove(str(EXAMPLES))
    result = qdrant_faq.main(["--model", str(tiny_model_dir), "--pairs", str(pairs), "--epochs", "2", "--batch", "4",
                              "--out", str(tmp_path / "out")])
    assert result["filled"] == 16 and result["bottom_after_fill"] == 0  # 16 texts once; epoch 2 from the store
    assert result["qdrant_recall"] == pytest.approx(result["recall_after"])  # Qdrant finds what exact search finds
