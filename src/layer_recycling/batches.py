"""Batches: unpadded rows collated right-padded, a caller's padded batch (either side) mapped to rows and back
(``Layout``), stored states batched, and the length-grouped sampler of an epoch.

Inside the library every batch is right-padded; ``Layout`` maps a caller's layout to that one and back.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .data import IGNORE_INDEX, check_fields, length, spans

SCALES = "state_scales"  # int8's side records beside its "states" in a batch bound for a device (transfer.py)


class Layout:
    """Where each row's real tokens sit in a caller's padded batch (b, t), and the right-padded layout (b, n)."""

    def __init__(self, starts: Sequence[int], lengths: Sequence[int], t: int):
        self.starts, self.lengths, self.t = list(starts), list(lengths), t
        self.n = max(self.lengths, default=0)

    @classmethod
    def of(cls, batch: dict[str, torch.Tensor]) -> Layout:
        """The layout of a batch of token ids (or clips: ``input_values`` (b, samples)) and its mask."""
        ids = batch["input_ids"] if "input_ids" in batch else batch["input_values"]
        mask = batch.get("attention_mask")
        if mask is None:
            return cls([0] * ids.shape[0], [ids.shape[1]] * ids.shape[0], ids.shape[1])
        return cls(*spans(mask), ids.shape[1])

    def states(self, positions: Callable[[int], int] | None) -> Layout:
        """The layout of the states of this batch: the same for one state per position (``positions`` None), else
        each row's ``positions(n)`` states (a clip's frames) at the start of ``positions(t)``.

        Raises:
            ValueError: a row padded on the left, when the states are not one per position.
        """
        if positions is None:
            return self
        if positions(self.t) == 1:  # one state per input (the pooled level), wherever its tokens sit
            return Layout([0] * len(self.starts), [1] * len(self.starts), 1)
        if not self.right_padded:
            row = next(i for i, s in enumerate(self.starts) if s)
            raise ValueError(
                f"row {row} of the batch is padded on the left (its samples start at {self.starts[row]}): this "
                f"model's states are not one per input position but frames of the clip, which its heads count from "
                f"the start of the row. Pad clips on the right, as the model's feature extractor does"
            )
        return Layout(self.starts, [positions(n) for n in self.lengths], positions(self.t))

    @property
    def right_padded(self) -> bool:
        return not any(self.starts)

    def rows(self, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Each row of ``batch`` cut to its real tokens (fields shaped (b, t, ...) are sequences)."""
        return [{name: self._cut(v, i) for name, v in batch.items()} for i in range(len(self.starts))]

    def _cut(self, v: torch.Tensor, i: int) -> torch.Tensor:
        if v.dim() >= 2 and v.shape[1] == self.t:
            return v[i, self.starts[i] : self.starts[i] + self.lengths[i]]
        return v[i]

    def gather(self, x: torch.Tensor, fill: float = 0) -> torch.Tensor:
        """(b, t, ...) in the caller's layout -> (b, n, ...) right-padded with ``fill``."""
        if self.right_padded:
            return x[:, : self.n]
        return pad([x[i, s : s + n] for i, (s, n) in enumerate(zip(self.starts, self.lengths))], fill, to=self.n)

    def scatter(self, x: torch.Tensor, fill: float = 0) -> torch.Tensor:
        """(b, n, ...) right-padded -> (b, t, ...) in the caller's layout, ``fill`` at padded positions."""
        out = x.new_full((x.shape[0], self.t, *x.shape[2:]), fill)
        for i, (s, n) in enumerate(zip(self.starts, self.lengths)):
            out[i, s : s + n] = x[i, :n]
        return out

    def scatter_square(self, x: torch.Tensor) -> torch.Tensor:
        """(b, heads, n, n) token-by-token maps (attentions) -> (b, heads, t, t) in the caller's layout, 0 at
        padded rows and columns."""
        out = x.new_zeros((x.shape[0], x.shape[1], self.t, self.t))
        for i, (s, n) in enumerate(zip(self.starts, self.lengths)):
            out[i, :, s : s + n, s : s + n] = x[i, :, :n, :n]
        return out


def pad(tensors: Sequence[torch.Tensor], value: float = 0, to: int | None = None) -> torch.Tensor:
    """Right-pad tensors whose first dim varies: list of (n_i, ...) -> (b, max n_i or ``to``, ...)."""
    t = max([x.shape[0] for x in tensors] + [to or 0])
    out = tensors[0].new_full((len(tensors), t, *tensors[0].shape[1:]), value)
    for i, x in enumerate(tensors):
        out[i, : x.shape[0]] = x
    return out


def repad(states: Sequence[torch.Tensor], to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored states (n_i, h) as a batch: right-padded (b, max n_i or ``to``, h) and its attention mask (b, t)."""
    padded = pad(states, to=to)
    return padded, mask_for([s.shape[0] for s in states], padded.shape[1], padded.device)


def collate_states(states: Sequence[torch.Tensor | tuple], ragged: bool) -> dict[str, torch.Tensor]:
    """A batch of stored states, each a tensor (n_i, *feature) or as ``Store.get_stored`` gives it, (values,
    side records or None): ``{"states"}`` stacked, or right-padded with its ``attention_mask`` when ``ragged``;
    int8 codes come with their side records under ``SCALES`` (b, t, side), padded with 0, for the device to
    convert."""
    values = [s[0] if isinstance(s, tuple) else s for s in states]
    scales = [s[1] if isinstance(s, tuple) else None for s in states]
    out = dict(zip(("states", "attention_mask"), repad(values))) if ragged else {"states": stack(values, "states")}
    if scales[0] is not None:
        out[SCALES] = pad(scales, to=out["states"].shape[1]) if ragged else torch.stack(scales)
    return out


def mask_for(lengths: Sequence[int], t: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Attention mask (b, t) of ones on each row's first ``lengths[i]`` positions."""
    return (torch.arange(t, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]).long()


def stack(tensors: Sequence[torch.Tensor], name: str) -> torch.Tensor:
    """``torch.stack`` of a batch's fixed-size inputs (images, audio features) or their states.

    Raises:
        ValueError: two of them differ in shape (images of two sizes): naming both and the fix.
    """
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        raise ValueError(
            f"one batch holds {name} of shapes {a} and {b}: inputs without a token mask are batched as they are, "
            f"so a batch needs one size. Resize the images (the model's image processor does), or batch each size "
            f"apart (one fill/predict call per size)"
        )
    return torch.stack(list(tensors))


def collate_inputs(rows: Sequence[dict[str, torch.Tensor]], pad_id: int, ragged: bool) -> dict[str, torch.Tensor]:
    """Stack unpadded model inputs into a batch, right-padded with a matching attention mask.

    Raises:
        ValueError: the rows differ in which inputs they have (``check_fields``).
    """
    check_fields(rows, "row")
    if not ragged:
        return {n: stack([r[n] for r in rows], n) for n in rows[0]}
    lengths = [length(r) for r in rows]
    batch = {n: pad([r[n] for r in rows], pad_id if n == "input_ids" else 0) for n in rows[0] if n != "attention_mask"}
    batch["attention_mask"] = mask_for(lengths, max(lengths))
    return batch


def collate_groups(rows: Sequence[tuple[dict[str, list], dict]], stored: bool, pad_id: int, ragged: bool
                   ) -> dict[str, Any]:
    """A batch of examples of several inputs, ``({field: [state or model inputs, ...]}, labels)`` each:
    ``{field: {"states", "attention_mask"}}`` (or padded model inputs) with the b * k inputs of a field that holds
    k per example, example by example; labels as a plain loader batches them."""
    out: dict[str, Any] = {}
    for field in rows[0][0]:
        flat = [x for parts, _ in rows for x in parts[field]]
        out[field] = collate_states(flat, ragged) if stored else collate_inputs(flat, pad_id, ragged=ragged)
    return {**out, **collate_labels([y for _, y in rows], None, None)}


def collate_labels(
    rows: Sequence[dict[str, torch.Tensor]], lengths: Sequence[int] | None, t: int | None
) -> dict[str, torch.Tensor]:
    """Batch labels: per-token labels (one per token of each row) are padded with -100 to ``t``, as are label
    sequences of their own lengths (a CTC head's targets); others stacked."""
    out = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        per_token = lengths is not None and all(v.dim() >= 1 and v.shape[0] == n for v, n in zip(values, lengths))
        ragged = len({v.shape for v in values}) > 1 and all(v.dim() == 1 and v.dtype == torch.long for v in values)
        out[name] = pad(values, IGNORE_INDEX, to=t if per_token else None) if per_token or ragged else \
            torch.stack(values)
    return out


class LengthGroupedBatches(torch.utils.data.Sampler):
    """One rank's batches of an epoch: shuffled, grouped by length, and (with ``world`` > 1) a disjoint share.

    Each epoch draws a new order from ``seed`` and the epoch (``set_epoch`` picks one; each pass moves to the
    next). Examples are sorted by length within windows of 50 batches (``group=True``) so that batches hold
    similar lengths. As ``DistributedSampler``: the order is padded by repeating its first examples to a
    multiple of ``world``, and rank r takes every world-th example, so every rank gets equally many batches.
    Orders are numpy arrays (8 bytes an example while an epoch runs), never a Python object per example.
    """

    def __init__(self, lengths: Sequence[int] | np.ndarray, batch_size: int, shuffle: bool = True,
                 seed: int | None = None, *, rank: int = 0, world: int = 1, group: bool = True):
        self.lengths = np.asarray(lengths, dtype=np.int64) if not isinstance(lengths, np.ndarray) else lengths
        self.batch_size, self.shuffle, self.group = batch_size, shuffle, group
        self.seed = seed if seed is not None else random.randrange(2**31)
        self.rank, self.world, self.epoch = rank, world, 0

    def __len__(self) -> int:
        return -(-self._per_rank() // self.batch_size)

    def _per_rank(self) -> int:
        return -(-len(self.lengths) // self.world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        n = len(self.lengths)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        order = np.concatenate([order, order[: self._per_rank() * self.world - n]])[self.rank :: self.world]
        if self.group:
            window = self.batch_size * 50
            for s in range(0, len(order), window):  # longest first in each window (stable: ties keep their order)
                part = order[s : s + window]
                order[s : s + window] = part[np.argsort(-self.lengths[part], kind="stable")]
        starts = np.arange(0, len(order), self.batch_size)
        if self.shuffle and self.group:
            starts = rng.permutation(starts)
        return (order[s : s + self.batch_size].tolist() for s in starts)
