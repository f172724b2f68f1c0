"""Training data: map-style datasets over stored states (or over model inputs, for a store that keeps nothing).

Every epoch reads only the store; the bottom ran once, in ``fill``, before the first batch.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
import torch

from . import data, distributed
from .keys import digest
from .arch import lookup
from .columns import CachedDataset, CachedGroups, Columns, Labels, check_label_names
from .fill import fill_keyed, size_of
from .pipeline import input_names_of

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .stores import Store


class InputDataset(torch.utils.data.Dataset):
    """Item i is the unpadded model inputs and labels of example i; ``collate`` pads them into a model batch."""

    def __init__(self, rows: list[tuple[dict, dict]], pad_id: int, ragged: bool):
        self.rows, self.pad_id, self.ragged = rows, pad_id, ragged

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[dict, dict]:
        return self.rows[i]

    def collate(self, rows: list[tuple[dict, dict]]) -> dict[str, torch.Tensor]:
        batch = data.collate_inputs([r for r, _ in rows], self.pad_id, ragged=self.ragged)
        lengths = [data.length(r) for r, _ in rows] if self.ragged else None
        t = batch["input_ids"].shape[1] if self.ragged else None
        return {**batch, **data.collate_labels([y for _, y in rows], lengths, t)}


class GroupDataset(torch.utils.data.Dataset):
    """Examples of several inputs (anchor, positive, negatives...) as model inputs, for a store that keeps nothing:
    item i is ``({field: [model inputs, ...]}, labels)``; ``collate`` batches each field apart."""

    def __init__(self, rows: list[tuple[dict[str, list], dict]], pad_id: int, ragged: bool,
                 lengths: list[int] | None):
        self.rows, self.pad_id, self.ragged = rows, pad_id, ragged
        self.lengths = lengths  # all tokens of an example, for length-grouped samplers

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[dict[str, list], dict]:
        return self.rows[i]

    def collate(self, rows: list[tuple[dict[str, list], dict]]) -> dict[str, Any]:
        return data.collate_groups(rows, False, self.pad_id, self.ragged)


def group_dataset(pipe: Pipeline, examples: Iterable[Any], inputs: Sequence[str], dtype: torch.dtype | None,
                  fill_batch_size: int, progress: bool) -> GroupDataset | CachedGroups:
    """A dataset over ``examples`` whose fields ``inputs`` each hold one input or a list of them; every distinct
    input is filled first, once, keyed by its own content. With a store that keeps states it holds columns (keys,
    lengths, labels), read once; without, the examples' model inputs."""
    if pipe.store.keeps:
        return cached_groups(pipe, examples, list(inputs), dtype, fill_batch_size, progress)
    rows = [_group_parts(pipe, example, inputs, i) for i, example in enumerate(examples)]
    if not rows:
        raise ValueError("loader() got no examples; pass a non-empty list (or iterable) of examples")
    _check_labels([("", {}, y) for _, y in rows])
    _check_group_sizes(rows)
    lengths = [sum(data.length(x) for es in p.values() for _, x in es) for p, _ in rows] if pipe.arch.masked else None
    rows = [({f: [x for _, x in es] for f, es in p.items()}, y) for p, y in rows]
    _check_group_fields(rows)  # batches of model inputs: each field's inputs are batched together
    return GroupDataset(rows, pipe.pad_id, pipe.arch.masked, lengths)


def cached_groups(pipe: Pipeline, examples: Iterable[Any], inputs: list[str], dtype: torch.dtype | None,
                  fill_batch_size: int, progress: bool) -> CachedGroups:
    """A ``CachedGroups`` over ``examples``, read once: each input keyed and filled, its key and length left in its
    field's columns, the example's labels in ``Labels``."""
    fields = {f: Columns(ragged=pipe.arch.masked) for f in inputs}
    labels = Labels((), examples, functools.partial(group_labels, inputs=inputs))
    sizes: dict[str, int] = {}

    def keyed() -> Iterator[tuple[str, dict]]:
        for i, example in enumerate(examples):
            parts, y = _group_parts(pipe, example, inputs, i)
            sizes.update({} if sizes else {f: len(es) for f, es in parts.items()})
            _same_sizes(sizes, parts, i)
            labels.add(y)
            for field, entries in parts.items():
                for key, x in entries:
                    fields[field].add(key, x)
                    yield key, x

    fill_keyed(pipe, keyed(), fill_batch_size, progress, total=size_of(examples), what="examples to rec.loader")
    if not labels.n:
        raise ValueError("loader() got no examples; pass a non-empty list (or iterable) of examples")
    for columns in fields.values():
        columns.done()
    labels.done()
    return CachedGroups(pipe.store, fields, sizes, labels, dtype)


def group_labels(example: Any, i: int, inputs: list[str]) -> dict[str, torch.Tensor]:
    """The labels of example ``i`` of several inputs (beside its input fields)."""
    return _group_fields(example, inputs, i, "loader")[1]


def _group_parts(pipe: Pipeline, example: Any, inputs: Sequence[str], i: int):
    """({field: [(key, unpadded inputs), ...]}, labels) of one example of several inputs."""
    fields, labels = _group_fields(example, inputs, i, "loader")
    parts = {}
    for field, values in fields.items():
        encoded = [pipe.encode(v, f"example {i}'s field {field!r}") for v in values]
        inner = next((sorted(labels) for _, _, labels in encoded if labels), None)
        if inner:
            raise ValueError(
                f"example {i}'s field {field!r} holds labels ({inner}): with "
                f"loader(inputs=...) labels go on the example beside the inputs, not inside one of them. Move them"
            )
        parts[field] = [(k, x) for k, x, _ in encoded]
    return parts, labels


def _group_fields(example: Any, inputs: Sequence[str], i: int, caller: str) -> tuple[dict[str, list], dict]:
    """({field: [model input as given, ...]}, labels as tensors) of one example of several inputs, checked."""
    if not isinstance(example, Mapping) or any(f not in example for f in inputs):
        have = sorted(example) if isinstance(example, Mapping) else type(example).__name__
        raise ValueError(
            f"example {i} has {have}; {caller}(inputs={list(inputs)}) expects a dict with each of those fields "
            f"holding one model input (e.g. tokenizer(text)) or a list of them, and labels beside them"
        )
    fields = {}
    for field in inputs:
        value = example[field]
        ids = value.get("input_ids") if isinstance(value, Mapping) else None
        if isinstance(ids, (list, tuple)) and len(ids) > 1 and isinstance(ids[0], (list, tuple)):
            raise ValueError(
                f"example {i}'s field {field!r} holds one tokenizer call over {len(ids)} texts; {caller}(inputs=...) "
                f"takes one encoding per input: a list of them, e.g. [tok(text) for text in texts]"
            )
        several = isinstance(value, (list, tuple)) and value and isinstance(value[0], Mapping)
        fields[field] = list(value) if several else [value]
    outer = {k: v for k, v in data.normalize(example, ()).items() if k in data.LABEL_NAMES and v is not None}
    return fields, {n: data.as_tensor(v, n) for n, v in outer.items()}


def _check_group_sizes(rows: list[tuple[dict[str, list], dict]]) -> None:
    """Each field holds as many inputs in every example: a batch of b examples gives b * k rows, k per example."""
    first = {f: len(es) for f, es in rows[0][0].items()}
    for i, (parts, _) in enumerate(rows):
        _same_sizes(first, parts, i)


def _same_sizes(first: dict[str, int], parts: dict[str, list], i: int) -> None:
    sizes = {f: len(es) for f, es in parts.items()}
    if sizes != first:
        raise ValueError(
            f"example {i} holds {sizes} inputs per field, but example 0 holds {first}: a field's inputs are "
            f"batched as b * k rows, so every example needs the same k. Pad the lists (repeat an input) or "
            f"split the field"
        )


def _check_group_fields(rows: list[tuple[dict[str, list], dict]]) -> None:
    """Each field's model inputs have the same fields in every example (they are batched together)."""
    for field in rows[0][0]:
        data.check_fields([x for parts, _ in rows for x in parts[field]], f"input of field {field!r}, number")


def make_loader(
    pipe: Pipeline, examples: Iterable[Any], dtype: torch.dtype | None, batch_size: int = 32, shuffle: bool = False,
    fill_batch_size: int = 32, progress: bool = True, group_by_length: bool = False, seed: int | None = None,
    inputs: Sequence[str] | None = None, **dataloader_kwargs,
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``examples`` for training the top (see ``Recycled.loader``); states read as ``dtype``
    (None: as the store keeps them, for a copy to the device at their stored size)."""
    pipe.check_bottom()  # batches come from the store: it must hold this bottom's states
    if inputs is not None:
        if isinstance(inputs, str) or not inputs:
            raise TypeError(f"loader(inputs=...) takes a list of field names, e.g. ['anchor', 'positive']; got {inputs!r}")
        group = group_dataset(pipe, examples, list(inputs), dtype, fill_batch_size, progress)
        return dataloader(group, group.lengths, batch_size, shuffle, group_by_length, seed, **dataloader_kwargs)
    if pipe.store.keeps:
        dataset: Any = cached_dataset(pipe, examples, dtype, fill_batch_size, progress)
        return dataloader(dataset, dataset.lengths, batch_size, shuffle, group_by_length, seed, **dataloader_kwargs)
    encoded = [pipe.encode(e, f"example {i}") for i, e in enumerate(examples)]  # nothing kept: model inputs
    if not encoded:
        raise ValueError("loader() got no examples; pass a non-empty list (or iterable) of examples")
    _check_labels(encoded)
    data.check_fields([inputs for _, inputs, _ in encoded])
    lengths = [data.length(inputs) for _, inputs, _ in encoded] if pipe.arch.masked else None
    dataset = InputDataset([(i, y) for _, i, y in encoded], pipe.pad_id, ragged=pipe.arch.masked)
    return dataloader(dataset, lengths, batch_size, shuffle, group_by_length, seed, **dataloader_kwargs)


def cached_dataset(pipe: Pipeline, examples: Iterable[Any], dtype: torch.dtype | None, fill_batch_size: int,
                   progress: bool) -> CachedDataset:
    """A ``CachedDataset`` over ``examples``, read once: each is keyed, filled if the store lacks it, and leaves
    its key, length and labels in columns (a few dozen bytes; labels other than one number each are read from
    ``examples`` again when a batch is made)."""
    columns, labels = Columns(ragged=pipe.arch.masked), Labels(pipe.input_names, examples)

    def keyed() -> Iterator[tuple[str, dict]]:
        for i, example in enumerate(examples):
            key, inputs, y = pipe.encode(example, f"example {i}")
            columns.add(key, inputs)
            labels.add(y)
            yield key, inputs

    fill_keyed(pipe, keyed(), fill_batch_size, progress, total=size_of(examples), what="examples to rec.loader")
    if not labels.n:
        raise ValueError("loader() got no examples; pass a non-empty list (or iterable) of examples")
    columns.done()
    labels.done()
    return CachedDataset(pipe.store, columns, labels, dtype)


def input_loader(model: torch.nn.Module, examples: Iterable[Any], batch_size: int = 32, shuffle: bool = False,
                 group_by_length: bool = False, seed: int | None = None, inputs: Sequence[str] | None = None,
                 **dataloader_kwargs) -> torch.utils.data.DataLoader:
    """Padded batches of ``model``'s inputs and labels: for training a whole, un-recycled model the same way.
    ``inputs``: examples of several inputs, batched field by field as ``Recycled.loader(inputs=...)`` does."""
    arch = lookup(model)
    names = input_names_of(model, arch.generic)
    examples = list(examples)
    if not examples:
        raise ValueError("input_loader() got no examples; pass a non-empty list (or iterable) of examples")
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
    if inputs is not None:
        groups = [_input_group(e, list(inputs), names, i) for i, e in enumerate(examples)]
        _check_labels([("", {}, y) for _, y in groups])
        _check_group_sizes(groups)
        _check_group_fields(groups)
        lengths = [sum(data.length(x) for xs in p.values() for x in xs) for p, _ in groups] if arch.masked else None
        dataset: Any = GroupDataset(groups, pad_id, arch.masked, lengths)
        return dataloader(dataset, lengths, batch_size, shuffle, group_by_length, seed, **dataloader_kwargs)
    rows = [data.parts(data.normalize(e, names), names) for e in examples]
    _check_labels([("", i, y) for i, y in rows])
    data.check_fields([i for i, _ in rows])
    dataset = InputDataset(rows, pad_id, ragged=arch.masked)
    lengths = [data.length(i) for i, _ in rows] if arch.masked else None
    return dataloader(dataset, lengths, batch_size, shuffle, group_by_length, seed, **dataloader_kwargs)


def _input_group(example: Any, inputs: list[str], names: Sequence[str], i: int) -> tuple[dict[str, list], dict]:
    """({field: [model inputs, ...]}, labels) of one example of several inputs, for an un-recycled model."""
    fields, labels = _group_fields(example, inputs, i, "input_loader")
    return {f: [data.parts(data.normalize(v, names), names)[0] for v in vs] for f, vs in fields.items()}, labels


def dataloader(dataset: CachedDataset | InputDataset | GroupDataset, lengths: list[int] | None, batch_size: int,
               shuffle: bool, group_by_length: bool, seed: int | None, **dataloader_kwargs
               ) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset``: in batches of similar ``lengths`` when ``group_by_length``, and in a
    process group (torchrun) each rank's disjoint, equal share of every epoch. ``sampler=``/``batch_sampler=``
    in ``dataloader_kwargs`` replace ours."""
    common = dict(collate_fn=dataset.collate, **dataloader_kwargs)
    if "batch_sampler" in dataloader_kwargs:
        return torch.utils.data.DataLoader(dataset, **common)
    if "sampler" in dataloader_kwargs:
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, **common)
    ranks = distributed.active_group()
    grouped = group_by_length and lengths is not None
    if not grouped and ranks is None:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                           **common)
    if dataloader_kwargs.get("drop_last"):
        raise ValueError(
            "loader(drop_last=True) with group_by_length=True or in a process group: those batches come from a "
            "batch sampler, which DataLoader cannot combine with drop_last. Drop drop_last"
        )
    _, rank, world = ranks or (None, 0, 1)
    if ranks is not None:
        distributed.check_same(digest(_order(dataset)), ranks[0], "examples to rec.loader, or the same in another "
                               "order", "each rank takes its share of every epoch by position, so every rank "
                               "passes the same examples in the same order. Pass the same list on every rank")
    if ranks is not None and seed is None:
        seed = distributed.broadcast(torch.randint(2**31, ()).item(), ranks[0])  # one order for all ranks
    lengths = lengths if lengths is not None else np.ones(len(dataset), np.int64)
    sampler = data.LengthGroupedBatches(lengths, batch_size, shuffle, seed, rank=rank,
                                        world=world, group=grouped)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **common)


def _order(dataset: CachedDataset | CachedGroups | InputDataset | GroupDataset) -> list:
    """What a dataset's items are, in order (keys, or model inputs without a store), for comparing ranks."""
    if isinstance(dataset, CachedDataset):
        return [dataset.columns.keys]
    if isinstance(dataset, CachedGroups):
        return [columns.keys for columns in dataset.fields.values()]
    return [inputs for inputs, _ in dataset.rows]


def _check_labels(encoded: list[tuple[str, dict, dict]]) -> None:
    """All examples carry the same label fields: a batch cannot mix labelled and unlabelled examples."""
    first = sorted(encoded[0][2])
    for i, (_, _, labels) in enumerate(encoded):
        check_label_names(first, labels, i)
