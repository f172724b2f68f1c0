"""A store that keeps nothing: the bottom runs on every batch (the frozen-without-cache baseline)."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..fingerprint import Fingerprint


class NullStore:
    """The store API, nothing kept (as joblib's ``Memory(None)``): ``recycle(model, at, store=None)`` uses it; a
    pipeline over it fills nothing and runs the bottom on every batch (``Pipeline.keeps``)."""

    codec = "native"
    fingerprint_parts = None

    def __repr__(self) -> str:
        return "NullStore()"

    def __contains__(self, key: object) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __getitem__(self, key: str) -> torch.Tensor:
        raise KeyError(f"key {key!r} is not in the store: a NullStore keeps nothing (store=None)")

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        pass

    def contains_many(self, keys: Sequence[str]) -> np.ndarray:
        return np.zeros(len(keys), dtype=bool)

    def get_many(self, keys: Sequence[str], device=None, dtype=None) -> list[torch.Tensor]:
        return [self[k] for k in keys]

    def get_stored(self, keys: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        return [self[k] for k in keys]

    def put_many(self, keys: Iterable[str], values: Iterable[torch.Tensor], checks=None) -> None:
        pass

    def checks_many(self, keys: Sequence[str]) -> list[str | None]:
        return [None] * len(keys)

    def flush(self) -> None:
        pass

    def volume(self) -> int:
        return 0

    def bind_fingerprint(self, fingerprint: Fingerprint) -> None:
        pass
