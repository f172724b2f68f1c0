"""An in-memory store: one unpadded tensor per key, on the CPU or a chosen device."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch

from ..fingerprint import Fingerprint, dtype_name


class MemoryStore:
    """Per-example states kept in a dict, ragged (each entry keeps its own length, no padding).

    Args:
        device: where entries live (default CPU); a GPU keeps a small cache next to the model.
        dtype: the dtype entries are kept in (default: as the bottom produced them). ``torch.float16``
            or ``torch.bfloat16`` halve the memory; entries are converted back on read.
    """

    def __init__(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"MemoryStore(dtype={dtype!r}): expected a floating torch dtype such as torch.float16")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.codec = dtype_name(dtype)
        self.fingerprint_parts: dict[str, str] | None = None
        self._entries: dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"MemoryStore({len(self)} entries, device={self.device}, codec={self.codec})"

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __getitem__(self, key: str) -> torch.Tensor:
        try:
            return self._entries[key]
        except KeyError:
            raise KeyError(f"key {key!r} is not in the store ({len(self)} entries); fill it first") from None

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        if not isinstance(key, str):
            raise TypeError(f"store keys are str content digests, got {type(key).__name__}; use lr.digest(obj)")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"store values are tensors, got {type(value).__name__} for key {key!r}")
        # copy=True: a slice of a batch must not keep the whole padded batch alive.
        self._entries[key] = value.detach().to(device=self.device, dtype=self.dtype or value.dtype, copy=True)

    def get_many(
        self, keys: Sequence[str], device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> list[torch.Tensor]:
        return [self[k].to(device=device or self.device, dtype=dtype or self[k].dtype) for k in keys]

    def put_many(self, keys: Iterable[str], values: Iterable[torch.Tensor]) -> None:
        for key, value in zip(keys, values, strict=True):
            self[key] = value

    def bind_fingerprint(self, fingerprint: Fingerprint) -> None:
        if self.fingerprint_parts is None:
            self.fingerprint_parts = dict(fingerprint.parts)
        else:
            fingerprint.check(self.fingerprint_parts, where=repr(self))
