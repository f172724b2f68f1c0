"""An in-memory store: one unpadded tensor per key, on the CPU or a chosen device."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..fingerprint import Fingerprint
from .codecs import CODECS, NAMES, check_float16_range, codec_name, decode, encode, stored


class MemoryStore:
    """Per-example states kept in a dict, ragged (each entry keeps its own length, no padding).

    Args:
        device: where entries live (default CPU); a GPU keeps a small cache next to the model.
        codec: how entries are kept: None (as the bottom produced them), ``"float32"``, ``"float16"``,
            ``"bfloat16"`` (half the memory, converted back on read) or ``"int8"`` (a quarter, plus per row a
            scale and its 4 largest values kept exactly; on the CPU), or the matching torch dtype.
    """

    def __init__(self, device: torch.device | str | None = None, codec: str | torch.dtype | None = None):
        try:
            name = codec_name(codec)
        except ValueError:
            raise ValueError(
                f"MemoryStore(codec={codec!r}): expected None (as computed) or one of {list(NAMES)} (or the "
                f"matching torch dtype)"
            ) from None
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.codec = name or "native"
        self._codec = CODECS.get(self.codec)
        self.fingerprint_parts: dict[str, str] | None = None
        self._entries: dict[str, torch.Tensor | tuple[np.ndarray, np.ndarray]] = {}
        self._checks: dict[str, str] = {}  # key -> digest of the inputs its state came from, where given

    def __repr__(self) -> str:
        return f"MemoryStore({len(self)} entries, device={self.device}, codec={self.codec})"

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.get_many([key])[0]

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        if not isinstance(key, str):
            raise TypeError(f"store keys are str content digests, got {type(key).__name__}; use lr.digest(obj)")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"store values are tensors, got {type(value).__name__} for key {key!r}")
        if key in self._entries:
            return  # the first copy wins, as in every store
        value = value.detach()
        if self._codec is not None and self._codec.scaled:
            self._entries[key] = encode(value, self._codec, key)  # int8 codes and side records, on the CPU
        else:
            # copy=True: a slice of a batch must not keep the whole padded batch alive.
            dtype = self._codec.decoded if self._codec is not None else value.dtype
            if self.codec == "float16":
                check_float16_range(value, key)
            self._entries[key] = value.to(device=self.device, dtype=dtype, copy=True)

    def contains_many(self, keys: Sequence[str]) -> np.ndarray:
        return np.fromiter((k in self._entries for k in keys), dtype=bool, count=len(keys))

    def get_many(
        self, keys: Sequence[str], device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> list[torch.Tensor]:
        out = []
        for key in keys:
            try:
                entry = self._entries[key]
            except (KeyError, TypeError):
                raise KeyError(f"key {key!r} is not in the store ({len(self)} entries); fill it first") from None
            if isinstance(entry, tuple):
                out.append(decode(entry[0], entry[1], self._codec, device or self.device, dtype))
            else:
                out.append(entry.to(device=device or self.device, dtype=dtype or entry.dtype))
        return out

    def get_stored(self, keys: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """The states of ``keys`` as kept, not converted (see ``Store.get_stored``)."""
        out = []
        for key in keys:
            entry = self._entries.get(key) if isinstance(key, str) else None
            if entry is None:
                raise KeyError(f"key {key!r} is not in the store ({len(self)} entries); fill it first")
            out.append(stored(*entry, self._codec) if isinstance(entry, tuple) else (entry, None))
        return out

    def put_many(self, keys: Iterable[str], values: Iterable[torch.Tensor],
                 checks: Iterable[str | None] | None = None) -> None:
        keys, values = list(keys), list(values)
        checks = list(checks) if checks is not None else [None] * len(keys)
        if not len(keys) == len(values) == len(checks):
            raise ValueError(f"put_many got {len(keys)} keys, {len(values)} values and {len(checks)} checks")
        for key, value, check in zip(keys, values, checks):
            new = key not in self._entries
            self[key] = value
            if new and check is not None:
                self._checks[key] = check

    def checks_many(self, keys: Sequence[str]) -> list[str | None]:
        return [self._checks.get(k) for k in keys]

    def flush(self) -> None:
        """Nothing to do: a memory store lives as long as the process."""

    def volume(self) -> int:
        return sum(sum(a.nbytes for a in e) if isinstance(e, tuple) else e.numel() * e.element_size()
                   for e in self._entries.values())

    def bind_fingerprint(self, fingerprint: Fingerprint) -> None:
        if self.fingerprint_parts is None:
            self.fingerprint_parts = dict(fingerprint.parts)
        else:
            fingerprint.check(self.fingerprint_parts, where=repr(self))
