"""The Lightning and accelerate examples train the recycled top from the store (tiny model, seconds)."""

from __future__ import annotations

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
