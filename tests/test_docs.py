"""The trees in the README and docs/architecture.md name every module of the package, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "layer_recycling"


def _actual() -> set[str]:
    top = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    return top | {p.name + "/" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def _listed(doc: Path) -> set[str]:
    block = re.search(r"```\nsrc/layer_recycling/\n(.*?)```", doc.read_text(), re.S).group(1)
    names = set()
    for line in block.splitlines():
        names |= {w for w in line.split() if re.fullmatch(r"[a-z_]+\.py|[a-z_]+/", w)}
    return names


@pytest.mark.parametrize("doc", ["README.md", "docs/architecture.md"])
def test_the_tree_matches_the_package(doc):
    listed, actual = _listed(ROOT / doc), _actual()
    assert listed >= actual, f"{doc} does not list {sorted(actual - listed)}"
    stale = {n for n in listed - actual if not any(PACKAGE.rglob(n.rstrip("/")))}  # modules of subpackages
    assert not stale, f"{doc} lists {sorted(stale)}, which are not in the package"
