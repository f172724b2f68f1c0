"""Examples in and batches out: normalise one-example dicts, unpad padded batches, re-pad cached states.

Sequences are right-padded: an example's tokens are the first ``attention_mask.sum()`` positions of its row.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch

LABEL_NAMES = ("labels", "start_positions", "end_positions")
_LABEL_ALIASES = {"label": "labels", "label_ids": "labels"}  # as the HF Trainer renames them
IGNORE_INDEX = -100  # what transformers' losses skip: padding of per-token labels


def as_tensor(value: Any, name: str) -> torch.Tensor:
    """``value`` as a tensor; integers become int64 so lists, arrays and tensors of ids key alike."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
    elif isinstance(value, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(value))
    else:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"example field {name!r} holds {type(value).__name__}, which is not a tensor, array, number or "
                f"(nested) list of numbers; keep non-model fields out of the example or under other names"
            ) from err
    if not t.is_floating_point() and t.dtype != torch.bool and not t.is_complex():
        t = t.long()
    return t


def normalize(example: Any, input_names: Sequence[str]) -> dict[str, Any]:
    """One example as a dict; an ``(input, label)`` pair becomes ``{input_names[0]: input, "labels": label}``."""
    if isinstance(example, Mapping):
        return {_LABEL_ALIASES.get(k, k): v for k, v in example.items()}
    if isinstance(example, (tuple, list)) and len(example) == 2:
        return {input_names[0]: example[0], "labels": example[1]}
    raise TypeError(
        f"an example must be a dict of model inputs (as a tokenizer returns for one text) or an "
        f"(input, label) pair; got {type(example).__name__}"
    )


def parts(example: dict[str, Any], input_names: Sequence[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a normalised example into (model inputs, labels) as tensors; other fields are metadata."""
    inputs = {n: as_tensor(example[n], n) for n in input_names if n in example and example[n] is not None}
    if not inputs:
        raise ValueError(
            f"example has none of the model's inputs {sorted(input_names)}; it has {sorted(example)}"
        )
    labels = {n: as_tensor(example[n], n) for n in LABEL_NAMES if n in example and example[n] is not None}
    return inputs, labels


def key_fields(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inputs that decide the bottom's output for an unpadded example (its mask is all ones)."""
    return {n: v for n, v in inputs.items() if n != "attention_mask"}


def length(inputs: dict[str, torch.Tensor]) -> int:
    """Number of tokens of an unpadded text example."""
    return int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else len(inputs["input_ids"])


def unbatch(batch: dict[str, torch.Tensor], lengths: Sequence[int] | None) -> list[dict[str, torch.Tensor]]:
    """Rows of a padded batch, each cut to its own length (fields shaped (b, t, ...) are sequences)."""
    b = next(iter(batch.values())).shape[0]
    t = batch["input_ids"].shape[1] if "input_ids" in batch else None
    rows = []
    for i in range(b):
        row = {}
        for name, value in batch.items():
            seq = lengths is not None and value.dim() >= 2 and value.shape[1] == t
            row[name] = value[i, : lengths[i]] if seq else value[i]
        rows.append(row)
    return rows


def lengths_of(batch: dict[str, torch.Tensor]) -> list[int] | None:
    """Per-row token counts of a padded text batch (None for inputs that are not token sequences)."""
    if "input_ids" not in batch:
        return None
    mask = batch.get("attention_mask")
    if mask is None:
        return [batch["input_ids"].shape[1]] * batch["input_ids"].shape[0]
    return mask.sum(dim=1).tolist()


def pad(tensors: Sequence[torch.Tensor], value: float = 0, to: int | None = None) -> torch.Tensor:
    """Right-pad tensors whose first dim varies: list of (n_i, ...) -> (b, max n_i or ``to``, ...)."""
    t = max([x.shape[0] for x in tensors] + [to or 0])
    out = tensors[0].new_full((len(tensors), t, *tensors[0].shape[1:]), value)
    for i, x in enumerate(tensors):
        out[i, : x.shape[0]] = x
    return out


def mask_for(lengths: Sequence[int], t: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Attention mask (b, t) of ones on each row's first ``lengths[i]`` positions."""
    return (torch.arange(t, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]).long()


def collate_inputs(rows: Sequence[dict[str, torch.Tensor]], pad_id: int, ragged: bool) -> dict[str, torch.Tensor]:
    """Stack unpadded model inputs into a batch, right-padded with a matching attention mask."""
    if not ragged:
        return {n: torch.stack([r[n] for r in rows]) for n in rows[0]}
    lengths = [length(r) for r in rows]
    batch = {n: pad([r[n] for r in rows], pad_id if n == "input_ids" else 0) for n in rows[0] if n != "attention_mask"}
    batch["attention_mask"] = mask_for(lengths, max(lengths))
    return batch


def collate_labels(
    rows: Sequence[dict[str, torch.Tensor]], lengths: Sequence[int] | None, t: int | None
) -> dict[str, torch.Tensor]:
    """Batch labels: per-token labels (one per token of each row) are padded with -100 to ``t``; others stacked."""
    out = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        per_token = lengths is not None and all(v.dim() >= 1 and v.shape[0] == n for v, n in zip(values, lengths))
        out[name] = pad(values, IGNORE_INDEX, to=t) if per_token else torch.stack(values)
    return out


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Batches of similar lengths: shuffle, sort within windows of 50 batches, cut, shuffle the batches.

    Each epoch draws a new order (seeded from ``seed`` and the epoch count) when ``shuffle``.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, seed: int | None = None):
        self.lengths, self.batch_size, self.shuffle = list(lengths), batch_size, shuffle
        self.seed = seed if seed is not None else random.randrange(2**31)
        self.epoch = 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        window = self.batch_size * 50
        order = [i for s in range(0, len(order), window)
                 for i in sorted(order[s : s + window], key=self.lengths.__getitem__, reverse=True)]
        batches = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        return iter(batches)
