"""What a training dataset holds per example: its key, its length and its labels, as arrays, not Python objects.

At 10M examples a list of (key, labels, length) tuples costs gigabytes, and again in every DataLoader worker that
touches it (fork copies a page whenever a reference count changes). Here an example costs 20 bytes of key, 4 of
length and 1-8 per scalar label (integers in the smallest type that holds them), in tensors moved to shared memory
once: fork and spawn workers map the same pages.
"""

from __future__ import annotations

import array
import ctypes
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from . import batches, data
from .stores.binkeys import KEY_BYTES, key_bytes, key_strs

if TYPE_CHECKING:
    from .stores import Store


_TYPECODES = {torch.int64: "q", torch.int32: "i", torch.float32: "f", torch.float64: "d", torch.bool: "b"}


class Labels:
    """Each example's labels. Scalar labels of one dtype per name (classes, scores, group ids) are columns;
    other labels (per-token tags, vectors) are read again from ``source`` when a batch is made, or, for a source
    that cannot be read again (a generator), kept as they came."""

    def __init__(self, input_names: tuple[str, ...], source: Any, read: Callable[[Any, int], dict] | None = None):
        self.names, self.n = None, 0
        self.read = read or functools.partial(plain_labels, input_names=input_names)  # (example, i) -> labels
        self.source = source if indexable(source) else None
        self._grow: dict[str, tuple[torch.dtype, array.array]] | None = {}  # scalar columns while they are built
        self.columns: dict[str, torch.Tensor] | None = None
        self.dtypes: dict[str, torch.dtype] = {}  # each column's dtype as given (its values may be kept narrower)
        self.kept: list[dict] | None = None  # labels as they came: non-scalar labels of a source read once

    def add(self, labels: dict[str, torch.Tensor]) -> None:
        """The labels of the next example.

        Raises:
            ValueError: its label fields differ from the first example's.
        """
        self._check_names(labels)
        if self._grow is not None and not self._scalar(labels):
            self._stop_columns()
        if self._grow is not None:
            for name, value in labels.items():
                self._grow.setdefault(name, (value.dtype, array.array(_TYPECODES[value.dtype])))[1].append(value.item())
        elif self.kept is not None:
            self.kept.append(labels)
        self.n += 1

    def _check_names(self, labels: dict[str, torch.Tensor]) -> None:
        if self.names is None:
            self.names = sorted(labels)
        check_label_names(self.names, labels, self.n)

    def _scalar(self, labels: dict[str, torch.Tensor]) -> bool:
        return all(v.dim() == 0 and v.dtype in _TYPECODES and v.dtype == self._grow.get(n, (v.dtype,))[0]
                   for n, v in labels.items())

    def _stop_columns(self) -> None:
        """Labels that are not one number of one dtype each: read them from the source, or keep them."""
        if self.source is None:
            self.kept = [{n: torch.tensor(col[i], dtype=dt) for n, (dt, col) in self._grow.items()}
                         for i in range(self.n)]
        self._grow = None

    def done(self) -> None:
        """Join the columns (once every example was added) and move them to shared memory."""
        if self._grow is not None:
            self.dtypes = {n: dt for n, (dt, _) in self._grow.items()}
            self.columns = {n: narrow(torch.tensor(col, dtype=dt)).share_memory_() for n, (dt, col) in self._grow.items()}
            self.source = None  # not read again: a spawn worker would get a pickled copy of a list of examples
        self._grow = None
        if self.n >= TRIM_AT:  # the last step of building a dataset: what it grew and freed goes back
            give_back_heap()

    def of(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        if self.columns is not None:
            rows = {n: c[indices].to(self.dtypes[n]) for n, c in self.columns.items()}
            return [{n: r[j] for n, r in rows.items()} for j in range(len(indices))]
        if self.kept is not None:
            return [self.kept[i] for i in indices]
        return [self.read(self.source[i], i) for i in indices]


TRIM_AT = 1 << 16  # examples from which a built dataset hands the C heap's free pages back


def give_back_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing). Building a
    dataset grows buffers (keys, lengths, labels) and the fill's per-chunk objects on the heap, then frees them; glibc
    keeps what it cannot cut from the top of its heap, and a built loader kept 54 B an example of it (300k examples)
    beside 25 B of columns."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc
        pass


def narrow(column: torch.Tensor) -> torch.Tensor:
    """An integer column in the smallest integer type that holds its values (a class id: 1 byte, not 8); ``Labels``
    gives each value back in the column's own dtype."""
    if column.dtype not in (torch.int64, torch.int32) or not len(column):
        return column
    lo, hi = int(column.min()), int(column.max())
    fits = (t for t in (torch.int8, torch.int16, torch.int32) if torch.iinfo(t).min <= lo and hi <= torch.iinfo(t).max)
    return column.to(next(fits, column.dtype))


def plain_labels(example: Any, i: int, input_names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The labels of example ``i`` as the loader read them the first time (cut as its inputs were)."""
    return data.parts(data.normalize(example, input_names), input_names)[1]


def check_label_names(first: list[str], labels: dict, i: int) -> None:
    """Refuse example ``i`` whose label fields are not example 0's (``first``): a batch cannot mix them.

    Raises:
        ValueError: naming both sets of fields and the fix.
    """
    if sorted(labels) != first:
        raise ValueError(
            f"example {i} has {sorted(labels) or 'no labels'}, but example 0 has {first or 'no labels'}: every "
            f"example of a loader needs the same label fields. Add the missing labels, or leave labels out of all "
            f"examples"
        )


def indexable(source: Any) -> bool:
    """A list, a tuple, a ``datasets.Dataset``: something whose i-th example can be read again."""
    return isinstance(source, Sequence) or hasattr(source, "__getitem__") and hasattr(source, "__len__") and not \
        isinstance(source, (dict, str, bytes))


class Columns:
    """Keys (n, 20) and lengths (n,) of examples as they are read; ``done`` freezes them in shared memory."""

    def __init__(self, ragged: bool):
        self.ragged, self._keys, self._lengths = ragged, bytearray(), array.array("i")
        self.keys: torch.Tensor | None = None
        self.lengths: torch.Tensor | None = None

    def add(self, key: str, length: int | None) -> None:
        """The next example's key and, for ragged states, how many its entry holds (``Pipeline.stored_length``)."""
        self.add_length(key, length if self.ragged else None)

    def add_length(self, key: str, length: int | None) -> None:
        self._keys += key_bytes([key]).tobytes()
        if self.ragged:
            self._lengths.append(length)

    def done(self) -> None:
        self.keys = torch.frombuffer(self._keys, dtype=torch.uint8).view(-1, KEY_BYTES).share_memory_()  # 1 copy
        self.lengths = torch.frombuffer(self._lengths, dtype=torch.int32).share_memory_() if self.ragged else None
        self._keys, self._lengths = bytearray(), array.array("i")


class CachedDataset(torch.utils.data.Dataset):
    """Item i is ``{"states": (n_i, h), labels...}`` read from the store; ``collate`` re-pads a batch."""

    def __init__(self, store: Store, columns: Columns, labels: Labels, dtype: torch.dtype | None):
        self.store, self.columns, self.labels, self.dtype = store, columns, labels, dtype

    @classmethod
    def from_items(cls, store: Store, items: Sequence[tuple[str, dict, int | None]], dtype: torch.dtype | None
                   ) -> CachedDataset:
        """A dataset over entries already stored: ``(key, labels, tokens or None)`` each, e.g. for a sampler of
        your own. ``rec.loader`` and ``rec.dataset`` build it from examples, filling what is missing."""
        columns, labels = Columns(ragged=bool(items) and items[0][2] is not None), Labels((), None)
        for key, y, n in items:
            columns.add_length(key, n)
            labels.add({name: data.as_tensor(v, name) for name, v in y.items()})
        columns.done()
        labels.done()
        return cls(store, columns, labels, dtype)

    def __len__(self) -> int:
        return int(self.columns.keys.shape[0])

    @property
    def lengths(self) -> np.ndarray | None:
        """States of each example (tokens, or a clip's frames; None for inputs of a fixed size): for length-grouped
        samplers."""
        return None if self.columns.lengths is None else self.columns.lengths.numpy()

    def keys(self, indices: Sequence[int] | slice = slice(None)) -> list[str]:
        """The store keys of examples ``indices``."""
        return key_strs(self.columns.keys[indices].numpy())

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        # One batched read per batch: DataLoader calls this when the dataset defines it.
        states = read_states(self.store, self.keys(list(indices)), self.dtype)
        return [{"states": s, **y} for s, y in zip(states, self.labels.of(list(indices)))]

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        states = batches.collate_states([r.pop("states") for r in rows], ragged=self.columns.ragged)
        if "attention_mask" not in states:
            return {**states, **batches.collate_labels(rows, None, None)}
        lengths = states["attention_mask"].sum(1).tolist()
        return {**states, **batches.collate_labels(rows, lengths, states["states"].shape[1])}


class CachedGroups(torch.utils.data.Dataset):
    """Examples of several inputs (anchor, positive, negatives...) over stored states: item i is ``({field: [state,
    ...]}, labels)``, each input its own stored entry; per field, k inputs an example in its ``Columns``."""

    def __init__(self, store: Store, fields: dict[str, Columns], sizes: dict[str, int], labels: Labels,
                 dtype: torch.dtype | None):
        self.store, self.fields, self.sizes, self.labels, self.dtype = store, fields, sizes, labels, dtype
        self.ragged = next(iter(fields.values())).ragged
        per_field = [c.lengths.view(-1, sizes[f]).sum(1) for f, c in fields.items()] if self.ragged else None
        self._lengths = torch.stack(per_field).sum(0).int().share_memory_() if per_field else None

    def __len__(self) -> int:
        return self.labels.n

    @property
    def lengths(self) -> np.ndarray | None:
        """All tokens of each example (None for inputs that are not token sequences): for length-grouped samplers."""
        return None if self._lengths is None else self._lengths.numpy()

    def __getitem__(self, i: int) -> tuple[dict[str, list], dict]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[dict[str, list], dict]]:
        keys = {f: key_strs(c.keys.view(-1, self.sizes[f], KEY_BYTES)[list(indices)].numpy())
                for f, c in self.fields.items()}
        unique = list(dict.fromkeys(k for ks in keys.values() for k in ks))
        state = dict(zip(unique, read_states(self.store, unique, self.dtype)))  # one read per batch, each key once
        rows = []
        for j, y in enumerate(self.labels.of(list(indices))):
            rows.append(({f: [state[k] for k in ks[j * self.sizes[f] : (j + 1) * self.sizes[f]]]
                          for f, ks in keys.items()}, y))
        return rows

    def collate(self, rows: list[tuple[dict[str, list], dict]]) -> dict[str, Any]:
        return batches.collate_groups(rows, True, 0, self.ragged)


def read_states(store: Store, keys: list[str], dtype: torch.dtype | None) -> list:
    """The states of ``keys`` as ``dtype``; None: as stored (``Store.get_stored``), converted on the device."""
    return store.get_many(keys, dtype=dtype) if dtype is not None else store.get_stored(keys)
