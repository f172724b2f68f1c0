"""What a sweep runs: the settings (full, frozen, recycled at a level and codec, LoRA on the top, a head on the pooled
output) and how each trains."""

from __future__ import annotations

import dataclasses
from typing import Sequence

SETTINGS = ("full", "frozen", "recycled", "recycled+lora", "head")
HEAD = "head"  # a level of --levels: the pooled output stored, a head trained on it (recycle(at="pooled"))


@dataclasses.dataclass
class Setting:
    """One row of the sweep."""

    name: str  # one of SETTINGS
    level: float = 0.0  # recycled (or frozen) fraction of blocks; 1.0 for the head
    codec: str = "float32"  # how the store keeps states (recycled settings)

    @property
    def label(self) -> str:
        if self.name in ("full", HEAD):
            return self.name
        codec = "" if self.codec == "float32" else f" {self.codec}"
        return f"{self.name} {round(self.level * 100)}%{codec}"


@dataclasses.dataclass
class TrainConfig:
    """How each setting trains: the same for every setting of a sweep."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 5e-5
    lora_lr: float = 1e-3
    lora_rank: int = 8
    head_lr: float = 1e-3  # the head setting: a small head trained alone (as LoRA's adapters, a higher rate)
    seed: int = 0
    store_dir: str | None = None  # None: memory store for float32, a temporary directory for other codecs


def default_settings(levels: Sequence[float | str] = (0.0, 0.25, 0.5, 0.75, 1.0), frozen_level: float = 0.5,
                     codecs: Sequence[str] = ("float16", "int8"), lora: bool = True) -> list[Setting]:
    """Full, frozen at ``frozen_level``, recycled at each level (``"head"``: the head setting), LoRA on the top and
    each codec at 50%."""
    settings = [Setting("full"), Setting("frozen", frozen_level)]
    settings += [Setting(HEAD, 1.0) if level == HEAD else Setting("recycled", level) for level in levels]
    if lora:
        settings.append(Setting("recycled+lora", 0.5))
    settings += [Setting("recycled", 0.5, codec) for codec in codecs if codec != "float32"]
    return settings
