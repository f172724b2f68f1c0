"""The models and inputs of gpu_check.py: the real weights where their packages are installed, else the shapes alone.

A machine lent for minutes has none of the model packages, and step times do not depend on the weights' values: each
model's exact config.json is kept in benchmarks/configs/ and initialised at random with a seed. Token lengths are
drawn with a seed from IMDB's histogram (benchmarks/configs/imdb_lengths.json, written by length_histogram.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import transformers as T

from layer_recycling.bench import assets

CONFIGS = Path(__file__).resolve().parent / "configs"
LENGTHS = CONFIGS / "imdb_lengths.json"
SEED = 0  # of the random init (the whole model, or the classifier head on real weights) and of the drawn inputs
REAL, SHAPES = "real weights", "shapes only"
# name -> (the folder of its config.json under CONFIGS, the function of bench/assets.py that finds its weights)
MODELS = {"minilm": ("all-MiniLM-L6-v2", "minilm_path"), "mpnet": ("all-mpnet-base-v2", "mpnet_path")}
PROVENANCE = {"_name_or_path", "architectures", "transformers_version"}  # config fields that do not change the model
# --smoke keeps each family and shrinks its widths, so both configs build and run on a CPU in seconds
SMOKE_SIZES = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 37, "num_hidden_layers": 4,
               "vocab_size": 1000}


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one model of the check comes from, and how it is built."""

    name: str
    """The check's name for it: ``"minilm"`` or ``"mpnet"``."""
    weights: str
    """``REAL`` (from_pretrained on the installed model) or ``SHAPES`` (random init of the kept config)."""
    path: Path
    """The folder holding its config.json: the installed model, or its folder under ``CONFIGS``."""
    why: str
    """Why this source: the package was found, or the lookup's error (which names the package to install)."""
    smoke: bool = False
    """Widths shrunk to ``SMOKE_SIZES`` (``SHAPES`` only)."""

    def config(self) -> T.PretrainedConfig:
        config = T.AutoConfig.from_pretrained(self.path, num_labels=2)
        for name, value in (SMOKE_SIZES.items() if self.smoke else ()):
            setattr(config, name, value)
        return config

    def maker(self) -> Callable[[], torch.nn.Module]:
        """A function returning a fresh float32 sequence classifier, the same weights each call (built once)."""
        torch.manual_seed(SEED)
        if self.weights == REAL:
            template = T.AutoModelForSequenceClassification.from_pretrained(self.path, num_labels=2)
        else:
            template = T.AutoModelForSequenceClassification.from_config(self.config())
        template = template.float()
        return lambda: copy.deepcopy(template)

    def describe(self) -> str:
        config = self.config()
        shape = (f"{config.model_type}, {config.num_hidden_layers} blocks, hidden {config.hidden_size}, "
                 f"vocab {config.vocab_size}")
        shrunk = ", shrunk for --smoke" if self.smoke else ""
        return f"{self.name}: {self.weights} ({shape}{shrunk}) from {self.path}; {self.why}"


def sources(weights: str = "auto", smoke: bool = False) -> list[Source]:
    """Each model's source: ``"real"`` (refuse if not installed), ``"shapes"``, or ``"auto"`` (real where installed).

    ``smoke`` is shapes only: real weights cannot be shrunk.
    """
    if weights not in ("auto", "real", "shapes"):
        raise ValueError(f"weights={weights!r}: expected 'auto', 'real' or 'shapes'")
    if smoke and weights == "real":
        raise ValueError("--smoke runs shrunk random models; --weights real needs a full run (drop --smoke)")
    return [_source(name, weights, smoke) for name in MODELS]


def _source(name: str, weights: str, smoke: bool) -> Source:
    folder, lookup = MODELS[name]
    kept = CONFIGS / folder
    if smoke or weights == "shapes":
        return Source(name, SHAPES, kept, "--smoke" if smoke else "--weights shapes", smoke)
    try:
        path = getattr(assets, lookup)()
    except (ModuleNotFoundError, FileNotFoundError) as err:
        if weights == "real":
            raise
        return Source(name, SHAPES, kept, f"its weights are not installed ({err})")
    _same_shapes(kept, path)
    return Source(name, REAL, path, "installed")


def _same_shapes(kept: Path, installed: Path) -> None:
    """Refuse an installed model whose config differs from the kept one: its timings would not be this check's."""
    ours, theirs = (json.loads((p / "config.json").read_text()) for p in (kept, installed))
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k) and k not in PROVENANCE)
    if differ:
        raise ValueError(
            f"the installed model at {installed} has another config.json than {kept} (fields {differ}); expected the "
            f"same model. Reinstall the package the lookup names, or run with --weights shapes"
        )


def lengths(n: int, tokens: int, seed: int = SEED) -> np.ndarray:
    """``n`` token counts drawn from IMDB's histogram (uniform within a bin), cut at ``tokens`` as truncation does."""
    h = json.loads(LENGTHS.read_text())
    counts = np.array([*h["counts"], h[f"at_least_{len(h['counts']) * h['bin_width']}"]], dtype=float)
    g = np.random.default_rng(seed)
    bins = g.choice(len(counts), size=n, p=counts / counts.sum())
    drawn = bins * h["bin_width"] + g.integers(0, h["bin_width"], size=n)
    return np.clip(drawn, 3, tokens)  # a first and last token and at least one between


def examples(n: int, tokens: int, vocab: int, seed: int = SEED) -> list[dict]:
    """``n`` examples of random token ids, lengths drawn by ``lengths``, labels 0/1 (speed needs no real text)."""
    g = np.random.default_rng(seed + 1)
    low = min(1000, vocab // 2)  # clear of the special ids (0..~103 in both vocabularies)
    return [{"input_ids": [low - 1, *g.integers(low, vocab, size=int(t) - 2).tolist(), low - 2], "label": i % 2}
            for i, t in enumerate(lengths(n, tokens, seed))]


def padded(rows: list[dict], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Rows right-padded with ``pad_id`` to the longest: input_ids and attention_mask (b, t), labels (b,)."""
    t = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "labels": torch.tensor([r["label"] for r in rows], device=device)}
