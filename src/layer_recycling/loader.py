"""Training data: map-style datasets over stored states (or over model inputs, for a store that keeps nothing).

Every epoch reads only the store; the bottom ran once, in ``fill``, before the first batch.
"""

from __future__ import annotations

import array
import functools
import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np
import torch

from . import batches, data, distributed
from .keys import digest
from .columns import CachedDataset, CachedGroups, Columns, Labels, check_label_names, indexable
from .fill import fill_keyed, size_of

if TYPE_CHECKING:
    from .pipeline import Pipeline


class InputDataset(torch.utils.data.Dataset):
    """Model inputs and labels read from ``source[i]`` when item i is asked (for a store that keeps nothing, and
    for whole models): nothing is held per example but its length. ``read(example, i)`` gives ``(inputs,
    labels)``, or ``({field: [inputs, ...]}, labels)`` for examples of several inputs; ``collate`` pads a batch."""

    def __init__(self, source: Sequence, read: Callable[[Any, int], tuple], collate: Callable[[list], dict],
                 lengths: np.ndarray | None, order: str):
        self.source, self.read, self.collate, self.lengths = source, read, collate, lengths
        self.order = order  # a digest of every example's inputs, in order: ranks compare it

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple:
        return self.read(self.source[i], i)


def _plain_item(example: Any, i: int, names: Sequence[str]) -> tuple[dict, dict]:
    return data.parts(data.normalize(example, names), names)


def _collate_plain(rows: list[tuple[dict, dict]], pad_id: int, ragged: bool, frames: Callable | None = None,
                   model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """A padded batch of model inputs and labels; per-position labels are padded to the states' positions (a
    clip's frames: ``frames(model, n)``, as ``Arch.frames``)."""
    batch = batches.collate_inputs([r for r, _ in rows], pad_id, ragged=ragged)
    at = (lambda n: n) if frames is None else functools.partial(frames, model)
    lengths = [at(data.length(r)) for r, _ in rows] if ragged else None
    t = at(batch["attention_mask"].shape[1]) if ragged else None
    return {**batch, **batches.collate_labels([y for _, y in rows], lengths, t)}


def input_dataset(examples: Iterable[Any], parse: Callable[[Any, int], tuple], read: Callable[[Any, int], tuple],
                  collate: Callable[[list], dict], ragged: bool, grouped: bool, caller: str) -> InputDataset:
    """An ``InputDataset`` over ``examples`` (a list or ``datasets.Dataset`` is read again for each batch; another
    iterable is listed first): one pass parses each (``parse`` checks it as the loader will use it) for its
    length, its inputs and labels (batched with example 0's) and the order digest, keeping none of it."""
    source = examples if indexable(examples) else list(examples)
    if not len(source):
        raise ValueError(f"{caller}() got no examples; pass a non-empty list (or iterable) of examples")
    lengths, order, first = array.array("q"), hashlib.blake2b(digest_size=20), None
    for i in range(len(source)):
        parts, labels = parse(source[i], i)
        groups = parts if grouped else {"": [parts]}
        first = first or (sorted(labels), groups)
        check_label_names(first[0], labels, i)
        _like_first(first[1], groups, i)
        rows = [x for xs in groups.values() for x in xs]
        lengths.append(sum(data.length(x) for x in rows) if ragged else 1)
        order.update(bytes.fromhex(digest([data.key_fields(x) for x in rows])))
    return InputDataset(source, read, collate, np.frombuffer(lengths, np.int64) if ragged else None, order.hexdigest())


def _like_first(first: dict[str, list], groups: dict[str, list], i: int) -> None:
    """Example ``i``'s inputs batch with example 0's: as many per field, and the same fields in each."""
    if "" not in groups:
        _same_sizes({f: len(xs) for f, xs in first.items()}, groups, i)
    for field, xs in groups.items():
        where = f" {field!r} input" if field else ""
        for j, x in enumerate(xs):
            data.same_fields(first[field][0], x, f"example 0's{where} 0" if field else "example 0",
                             f"example {i}'s{where} {j}" if field else f"example {i}")


def group_dataset(pipe: Pipeline, examples: Iterable[Any], inputs: Sequence[str], dtype: torch.dtype | None,
                  fill_batch_size: int, progress: bool) -> InputDataset | CachedGroups:
    """A dataset over ``examples`` whose fields ``inputs`` each hold one input or a list of them: with a store
    that keeps states, every distinct input is filled first, once, keyed by its own content, and columns (keys,
    lengths, labels) are kept; without, the examples' model inputs are read again for each batch."""
    if pipe.keeps:
        return cached_groups(pipe, examples, list(inputs), dtype, fill_batch_size, progress)

    def parse(example: Any, i: int) -> tuple[dict[str, list], dict]:
        parts, labels = _group_parts(pipe, example, inputs, i)
        rows = {f: [x for _, x in es] for f, es in parts.items()}
        pipe.check_rows([x for xs in rows.values() for x in xs], lambda _: f"example {i}")
        return rows, labels

    collate = functools.partial(batches.collate_groups, stored=False, pad_id=pipe.pad_id, ragged=pipe.arch.masked)
    read = _group_reader(list(inputs), pipe.input_names)
    return input_dataset(examples, parse, read, collate, pipe.arch.masked, True, "loader")


def _group_reader(inputs: list[str], names: Sequence[str]) -> Callable[[Any, int], tuple]:
    return functools.partial(_group_item, inputs=inputs, names=tuple(names))


def _group_item(example: Any, i: int, inputs: list[str], names: tuple[str, ...]) -> tuple[dict[str, list], dict]:
    """({field: [unpadded model inputs, ...]}, labels) of one example of several inputs."""
    fields, labels = _group_fields(example, inputs, i, "loader")
    return {f: [data.parts(data.normalize(v, names), names)[0] for v in vs] for f, vs in fields.items()}, labels


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
            if not sizes:  # example 0 sets how many inputs each field holds
                sizes.update({f: len(es) for f, es in parts.items()})
            _same_sizes(sizes, parts, i)
            labels.add(y)
            for field, entries in parts.items():
                for key, x in entries:
                    fields[field].add(key, pipe.stored_length(x) if pipe.arch.masked else None)
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


def _same_sizes(first: dict[str, int], parts: dict[str, list], i: int) -> None:
    sizes = {f: len(es) for f, es in parts.items()}
    if sizes != first:
        raise ValueError(
            f"example {i} holds {sizes} inputs per field, but example 0 holds {first}: a field's inputs are "
            f"batched as b * k rows, so every example needs the same k. Pad the lists (repeat an input) or "
            f"split the field"
        )


def make_loader(
    pipe: Pipeline, examples: Iterable[Any], *, dtype: torch.dtype | None, batch_size: int = 32, shuffle: bool = False,
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
        return dataloader(group, group.lengths, batch_size=batch_size, shuffle=shuffle,
                          group_by_length=group_by_length, seed=seed, **dataloader_kwargs)
    if pipe.keeps:
        dataset: Any = cached_dataset(pipe, examples, dtype, fill_batch_size, progress)
    else:  # nothing kept: batches of model inputs, the bottom runs on each
        def parse(example: Any, i: int) -> tuple[dict, dict]:
            _, inputs, labels = pipe.encode(example, f"example {i}")
            pipe.check_rows([inputs], lambda _: f"example {i}")
            return inputs, labels

        read = functools.partial(_plain_item, names=pipe.input_names)
        collate = functools.partial(_collate_plain, pad_id=pipe.pad_id, ragged=pipe.arch.masked,
                                    frames=pipe.arch.frames, model=pipe.source)
        dataset = input_dataset(examples, parse, read, collate, pipe.arch.masked, False, "loader")
    return dataloader(dataset, dataset.lengths, batch_size=batch_size, shuffle=shuffle, group_by_length=group_by_length,
                      seed=seed, **dataloader_kwargs)


def cached_dataset(pipe: Pipeline, examples: Iterable[Any], dtype: torch.dtype | None, fill_batch_size: int,
                   progress: bool) -> CachedDataset:
    """A ``CachedDataset`` over ``examples``, read once: each is keyed, filled if the store lacks it, and leaves
    its key, length and labels in columns (a few dozen bytes; labels other than one number each are read from
    ``examples`` again when a batch is made)."""
    columns, labels = Columns(ragged=pipe.arch.masked), Labels(pipe.input_names, examples)

    def keyed() -> Iterator[tuple[str, dict]]:
        for key, inputs, y in pipe.encode_many(examples):
            columns.add(key, pipe.stored_length(inputs) if pipe.arch.masked else None)
            labels.add(y)
            yield key, inputs

    fill_keyed(pipe, keyed(), fill_batch_size, progress, total=size_of(examples), what="examples to rec.loader")
    if not labels.n:
        raise ValueError("loader() got no examples; pass a non-empty list (or iterable) of examples")
    columns.done()
    labels.done()
    return CachedDataset(pipe.store, columns, labels, dtype)


def inputs_dataset(examples: Iterable[Any], names: Sequence[str], pad_id: int, ragged: bool,
                   inputs: Sequence[str] | None, caller: str, frames: Callable | None = None,
                   model: torch.nn.Module | None = None) -> InputDataset:
    """An ``InputDataset`` of a whole model's inputs (``names``) and labels, batched as a recycled model's
    ``loader`` batches them (``inputs``: examples of several inputs, field by field); for the un-recycled model.
    ``frames(model, n)``: the states an input of n positions yields (``Arch.frames``), for per-position labels."""
    if inputs is not None:
        read = _group_reader(list(inputs), names)
        collate = functools.partial(batches.collate_groups, stored=False, pad_id=pad_id, ragged=ragged)
    else:
        read = functools.partial(_plain_item, names=names)
        collate = functools.partial(_collate_plain, pad_id=pad_id, ragged=ragged, frames=frames, model=model)
    return input_dataset(examples, read, read, collate, ragged, inputs is not None, caller)


def dataloader(dataset: CachedDataset | CachedGroups | InputDataset, lengths: list[int] | None, *, batch_size: int,
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
    sampler = batches.LengthGroupedBatches(lengths, batch_size, shuffle, seed, rank=rank,
                                        world=world, group=grouped)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **common)


def _order(dataset: CachedDataset | CachedGroups | InputDataset) -> list:
    """What a dataset's items are, in order (keys, or model inputs without a store), for comparing ranks."""
    if isinstance(dataset, CachedDataset):
        return [dataset.columns.keys]
    if isinstance(dataset, CachedGroups):
        return [columns.keys for columns in dataset.fields.values()]
    return [dataset.order]
