"""Training data: map-style datasets over stored states (or over model inputs, for a store that keeps nothing).

Every epoch reads only the store; the bottom ran once, in ``fill``, before the first batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import torch

from . import data, distributed
from .arch import lookup
from .fill import fill_keyed
from .pipeline import input_names_of

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .stores import Store


class CachedDataset(torch.utils.data.Dataset):
    """Item i is ``{"states": (n_i, h), labels...}`` read from the store; ``collate`` re-pads a batch."""

    def __init__(self, store: Store, items: list[tuple[str, dict, int | None]], dtype: torch.dtype | None):
        self.store, self.items, self.dtype = store, items, dtype

    def __len__(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> list[int] | None:
        """Tokens of each example (None for inputs that are not token sequences): for length-grouped samplers."""
        return None if not self.items or self.items[0][2] is None else [n for _, _, n in self.items]

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        # One batched read per batch: DataLoader calls this when the dataset defines it.
        keys = [self.items[i][0] for i in indices]
        states = self.store.get_many(keys, dtype=self.dtype)
        return [{"states": s, **self.items[i][1]} for s, i in zip(states, indices)]

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        states = [r.pop("states") for r in rows]
        if self.items[0][2] is None:
            return {"states": torch.stack(states), **data.collate_labels(rows, None, None)}
        padded, mask = data.repad(states)
        return {"states": padded, "attention_mask": mask,
                **data.collate_labels(rows, [s.shape[0] for s in states], padded.shape[1])}


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


def make_loader(
    pipe: Pipeline, examples: Iterable[Any], dtype: torch.dtype | None, batch_size: int = 32, shuffle: bool = False,
    fill_batch_size: int = 32, progress: bool = True, group_by_length: bool = False, seed: int | None = None,
    **dataloader_kwargs,
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``examples`` for training the top (see ``Recycled.loader``); states read as ``dtype``
    (None: as the store keeps them, for a copy to the device at their stored size)."""
    encoded = [pipe.encode(e) for e in examples]
    if not encoded:
        raise ValueError("loader() got no examples; pass a non-empty list (or iterable) of examples")
    _check_labels(encoded)
    lengths = [data.length(inputs) for _, inputs, _ in encoded] if pipe.arch.masked else None
    if pipe.store.keeps:
        fill_keyed(pipe, [(k, i) for k, i, _ in encoded], fill_batch_size, progress)
        items = [(k, y, n) for (k, _, y), n in zip(encoded, lengths or [None] * len(encoded))]
        dataset: Any = CachedDataset(pipe.store, items, dtype=dtype)
    else:  # nothing kept: batches of model inputs, the bottom runs on each
        dataset = InputDataset([(i, y) for _, i, y in encoded], pipe.pad_id, ragged=pipe.arch.masked)
    return dataloader(dataset, lengths, batch_size, shuffle, group_by_length, seed, **dataloader_kwargs)


def input_loader(model: torch.nn.Module, examples: Iterable[Any], batch_size: int = 32, shuffle: bool = False,
                 group_by_length: bool = False, seed: int | None = None, **dataloader_kwargs
                 ) -> torch.utils.data.DataLoader:
    """Padded batches of ``model``'s inputs and labels: for training a whole, un-recycled model the same way."""
    arch = lookup(model)
    names = input_names_of(model, arch.generic)
    rows = [data.parts(data.normalize(e, names), names) for e in examples]
    if not rows:
        raise ValueError("input_loader() got no examples; pass a non-empty list (or iterable) of examples")
    _check_labels([("", i, y) for i, y in rows])
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
    dataset = InputDataset(rows, pad_id, ragged=arch.masked)
    lengths = [data.length(i) for i, _ in rows] if arch.masked else None
    return dataloader(dataset, lengths, batch_size, shuffle, group_by_length, seed, **dataloader_kwargs)


def dataloader(dataset: CachedDataset | InputDataset, lengths: list[int] | None, batch_size: int, shuffle: bool,
               group_by_length: bool, seed: int | None, **dataloader_kwargs) -> torch.utils.data.DataLoader:
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
    if ranks is not None and seed is None:
        seed = distributed.broadcast(torch.randint(2**31, ()).item(), ranks[0])  # one order for all ranks
    sampler = data.LengthGroupedBatches(lengths or [1] * len(dataset), batch_size, shuffle, seed, rank=rank,
                                        world=world, group=grouped)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **common)


def _check_labels(encoded: list[tuple[str, dict, dict]]) -> None:
    """All examples carry the same label fields: a batch cannot mix labelled and unlabelled examples."""
    names = set(encoded[0][2])
    for i, (_, _, labels) in enumerate(encoded):
        if set(labels) != names:
            have = sorted(labels) or "no labels"
            raise ValueError(
                f"example {i} has {have}, but example 0 has {sorted(names) or 'no labels'}: every example of a "
                f"loader needs the same label fields. Add the missing labels, or leave labels out of all examples"
            )
