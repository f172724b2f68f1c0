"""How a model is recycled: one small config that round-trips through JSON and travels with saved models."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ._version import __version__

CONFIG_NAME = "recycling_config.json"


@dataclasses.dataclass
class RecycleConfig:
    """The options of ``recycle``: what a saved model or store records about how it was recycled."""

    at: int | float = 0.5
    """Blocks to recycle: an int is a block count (0..L), a float a fraction of the L blocks (0.5 of 6 is 3)."""
    blocks: str | list[str] | None = None
    """Dotted path(s) of the block list(s); None: the architecture table, else the largest ModuleList."""
    store_misses: bool = True
    """At inference, store the states of examples the store did not hold (misses)."""
    preprocess: dict | None = None
    """The tokenizer's call arguments (max_length, truncation, ...): part of the fingerprint."""
    autocast: str | None = None
    """Run the bottom under ``torch.autocast`` with this dtype ("bfloat16", "float16"): part of the fingerprint."""
    check_split: bool = True
    """A split outside the architecture table (the generic rule, a ``blocks=`` override) compares itself with the
    whole model on the first batch its bottom sees (one more forward on up to 4 examples) and refuses if they
    differ; False skips that, for models too large to run twice."""
    untie: bool = False
    """Give the top its own trainable copy of parameters tied to the frozen bottom (an LM head tied to the input
    embeddings); False keeps them tied, hence frozen, and warns."""
    allow_nonfinite: bool = False
    """Store states holding NaN or inf (float codecs keep them; int8 cannot). False (the default) refuses them at
    fill and when serving stores a miss, naming the example; part of the fingerprint, so a reader of a store
    filled without it can trust that every entry is finite."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecycleConfig:
        """The config in ``d``; keys this version does not know are refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - {"recorded"})
        if unknown:
            raise ValueError(f"unknown recycling config fields {unknown}; expected some of {sorted(known)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def save_pretrained(self, directory: str | os.PathLike, **recorded: Any) -> Path:
        """Write ``recycling_config.json`` in ``directory``, with ``recorded`` facts (version, split, fingerprint)."""
        path = Path(directory) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {**self.to_dict(), "recorded": {"layer_recycling": __version__, **recorded}}
        path.write_text(json.dumps(body, indent=2, sort_keys=True, default=repr) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> RecycleConfig:
        """The config saved in ``directory`` by ``save_pretrained``."""
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}; save one with rec.recycle_config.save_pretrained(dir)")
        return cls.from_dict(json.loads(path.read_text()))

    @staticmethod
    def recorded(directory: str | os.PathLike) -> dict[str, Any]:
        """The facts recorded beside the config (level, block count, store codec, fingerprint)."""
        return json.loads((Path(directory) / CONFIG_NAME).read_text()).get("recorded", {})
