"""Examples in and batches out: one-example dicts to (inputs, labels), padded batches to rows and back.

Padding may sit on either side: each row's real tokens are the contiguous run of ones in its attention mask.
Inside the library every batch is right-padded; ``Layout`` maps a caller's layout to that one and back.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import numpy as np
import torch

LABEL_NAMES = ("labels", "start_positions", "end_positions")
_LABEL_ALIASES = {"label": "labels", "label_ids": "labels"}  # as the HF Trainer renames them
IGNORE_INDEX = -100  # what transformers' losses skip: padding of per-token labels
# one image (c, h, w); one clip's features (mels, frames); a spectrogram (frames, mels) as AST takes it
_EXAMPLE_DIMS = {"pixel_values": 3, "input_features": 2, "input_values": 2}
SCALES = "state_scales"  # int8's side records beside its "states" in a batch bound for a device (transfer.py)


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
            hint = " (text: tokenize it first, e.g. {**tokenizer(text), 'label': y})" if isinstance(value, str) else ""
            raise TypeError(
                f"example field {name!r} holds {type(value).__name__}{hint}; expected a tensor, array, number or "
                f"(nested) list of numbers. Keep other fields out of the example or under other names"
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
    """Split a normalised example into (model inputs, labels) as unpadded tensors; other fields are metadata.

    A text example (or a raw clip, ``input_values`` of (samples,)) padded in advance (``padding="max_length"``) or
    built with ``return_tensors="pt"`` (shape (1, n)) is cut to its real tokens (samples), so that it keys and
    computes like the unpadded example.
    """
    inputs = {n: as_tensor(example[n], n) for n in input_names if n in example and example[n] is not None}
    main = input_names[0]
    if main not in inputs:
        texts = [k for k, v in example.items() if isinstance(v, str)]
        hint = f" Tokenize the text first ({texts[0]!r}): {{**tokenizer(text), 'label': y}}." if texts else ""
        raise ValueError(
            f"example has no {main!r}, the model's main input (it has {sorted(example)}); expected {main!r}"
            f"{' and optionally ' + str(list(input_names[1:])) if input_names[1:] else ''}.{hint}"
        )
    labels = {n: as_tensor(example[n], n) for n in LABEL_NAMES if n in example and example[n] is not None}
    clip = inputs.get("input_values")
    if "input_ids" not in inputs and clip is not None and clip.dim() == 2 and clip.shape[0] == 1:
        inputs = {n: v[0] if v.dim() == 2 and v.shape[0] == 1 else v for n, v in inputs.items()}  # (1, samples)
    if sequence(inputs) is not None:
        inputs, labels = _unpad(inputs, labels, sequence(inputs))
    for name, dims in _EXAMPLE_DIMS.items():  # a processor's return_tensors="pt" output: a batch of one
        value = inputs.get(name)
        if value is not None and value.dim() == dims + 1:
            if value.shape[0] != 1:
                raise ValueError(f"one example holds {name} of shape {tuple(value.shape)}: a batch of "
                                 f"{value.shape[0]}. Pass one dict per image (or clip): split the batch into rows")
            inputs[name] = value[0]
    return inputs, labels


def sequence(inputs: dict[str, torch.Tensor]) -> str | None:
    """The input whose first dim is positions: ``input_ids`` (tokens), or ``input_values`` of one dim (a clip's
    samples); None for inputs of a fixed size (images, spectrograms)."""
    if "input_ids" in inputs:
        return "input_ids"
    clip = inputs.get("input_values")
    return "input_values" if clip is not None and clip.dim() == 1 else None


def _unpad(inputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], name: str):
    """One example's inputs (and per-position labels) cut to the real positions its mask marks, checked."""
    if name == "input_ids":
        inputs, labels = _batch_of_one(inputs, labels)
    mask = inputs.get("attention_mask")
    if mask is not None and mask.shape != inputs[name].shape:
        what = "token" if name == "input_ids" else "sample"
        raise ValueError(
            f"example has {name} of shape {tuple(inputs[name].shape)} but an attention_mask of shape "
            f"{tuple(mask.shape)}; expected one mask value per {what}. Pass the tokenizer's (or feature "
            f"extractor's) own attention_mask, or none (all real)"
        )
    if mask is not None and not bool(mask.all()):
        (start,), (n,) = spans(mask[None])
        t = mask.shape[0]
        cut = lambda v: v[start : start + n] if v.dim() >= 1 and v.shape[0] == t else v  # noqa: E731
        inputs, labels = {k: cut(v) for k, v in inputs.items()}, {k: cut(v) for k, v in labels.items()}
    check_sequence(inputs, "example")
    return inputs, labels


def _batch_of_one(inputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]):
    ids = inputs["input_ids"]
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise ValueError(
                f"one example holds input_ids of shape {tuple(ids.shape)}: a batch of {ids.shape[0]} texts. Pass "
                f"one dict per text (tokenize each text, or split the batch into rows)"
            )
        inputs = {n: v[0] if v.dim() >= 2 and v.shape[0] == 1 else v for n, v in inputs.items()}
        labels = {n: v[0] if v.dim() >= 1 and v.shape[0] == 1 and v.dim() >= 2 else v for n, v in labels.items()}
    return inputs, labels


def check_sequence(inputs: dict[str, torch.Tensor], what: str) -> None:
    """``check_tokens`` for token ids; a clip (``input_values``) must hold samples, as floats.

    Raises:
        ValueError, TypeError: naming what was received and what to do.
    """
    if "input_ids" in inputs:
        return check_tokens(inputs, what)
    clip = inputs["input_values"]
    if clip.shape[0] == 0:
        raise ValueError(f"{what} has no samples (input_values of length 0, or an attention_mask of zeros): the "
                         f"model cannot run an empty clip. Drop it")
    if not clip.is_floating_point():
        raise TypeError(f"{what} has input_values of dtype {str(clip.dtype).removeprefix('torch.')}; expected the "
                        f"float samples a feature extractor returns")


def check_tokens(inputs: dict[str, torch.Tensor], what: str) -> None:
    """Refuse an unpadded text example the recycled model would answer differently from the model: no tokens, or
    ``position_ids`` other than 0..n-1 (stored states do not carry positions; the top counts them from 0).

    Raises:
        ValueError: naming what was received and what to do.
    """
    n = inputs["input_ids"].shape[0]
    if n == 0:
        raise ValueError(
            f"{what} has no tokens (input_ids of length 0, or an attention_mask of zeros): the model cannot run an "
            f"empty sequence, and a stored empty state would enter batches as a fully masked row. Drop it"
        )
    positions = inputs.get("position_ids")
    if positions is not None and not torch.equal(positions.cpu(), torch.arange(n)):
        shown = positions.tolist()[:8]
        raise ValueError(
            f"{what} has position_ids {shown}{' ...' if n > 8 else ''}, not 0..{n - 1}: the stored states do not "
            f"carry positions, and a top that uses them (rotary attention in every block: Llama, Qwen, Gemma, ...) "
            f"counts them from 0, so other positions would be served silently wrong. Leave position_ids out (packed "
            f"sequences: one sequence per example)"
        )
    check_id_type(inputs["input_ids"], what)  # after the empty check: [] is a float tensor


def check_id_type(ids: torch.Tensor, what: str) -> None:
    """Refuse token ids that are not integers (floats, bools): they would key, then fail in the embedding.

    Raises:
        TypeError: naming the dtype received and the fix.
    """
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(
            f"{what} has input_ids of dtype {str(ids.dtype).removeprefix('torch.')}; expected integer token ids "
            f"(int64, as a tokenizer returns). Pass the tokenizer's input_ids, or convert them: ids.long()"
        )


def check_ids(ids: torch.Tensor, vocab: int, what: str, mask: torch.Tensor | None = None) -> None:
    """Refuse token ids outside 0..vocab-1 among ``ids``, one example's (n,) or a batch's (b, t) real tokens:
    torch's embedding would fail with an IndexError that names nothing (on an accelerator, a device assert).

    Raises:
        ValueError: naming the id, where it is, the vocabulary size and the likely fix.
    """
    check_id_type(ids, what)
    outside = (ids < 0) | (ids >= vocab)
    if mask is not None:
        outside &= mask.bool()  # padding holds the pad id, which never reaches a stored state
    if bool(outside.any()):
        at = outside.nonzero()[0].tolist()
        place = f"row {at[0]}, token {at[1]}" if len(at) == 2 else f"token {at[0]}"
        raise ValueError(
            f"{what} holds the token id {int(ids[tuple(at)])} ({place}; {int(outside.sum())} such id(s) in all), "
            f"but the model's embedding has {vocab} ids (0..{vocab - 1}). Was the text tokenized by another model's "
            f"tokenizer? Use the model's own, or resize its embeddings (model.resize_token_embeddings) before "
            f"lr.recycle"
        )


def key_fields(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inputs that decide the bottom's output for an unpadded example (its mask is all ones)."""
    return {n: v for n, v in inputs.items() if n != "attention_mask"}


def length(inputs: dict[str, torch.Tensor]) -> int:
    """Positions of an unpadded example: its tokens, or its clip's samples (``sequence``)."""
    return int(inputs[sequence(inputs) or "input_ids"].shape[0])


def spans(mask: torch.Tensor) -> tuple[list[int], list[int]]:
    """(starts, lengths) of each row's real tokens in an attention mask (b, t): its one contiguous run of ones.

    Raises:
        ValueError: a row's ones are not contiguous (packed sequences are not supported).
    """
    m = mask.bool().cpu()
    lengths = m.sum(dim=1)
    starts = torch.where(lengths > 0, m.long().argmax(dim=1), torch.zeros_like(lengths))
    positions = torch.arange(m.shape[1])[None, :]
    expected = (positions >= starts[:, None]) & (positions < (starts + lengths)[:, None])
    bad = (expected != m).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"attention_mask row {bad[0]} is {m[bad[0]].long().tolist()}: its ones are not one contiguous run. "
            f"Expected right or left padding (ones, then zeros, or zeros, then ones); pass one sequence per row"
        )
    return starts.tolist(), lengths.tolist()


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


def fields(row: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """The inputs an unpadded example gives its model, sorted; its mask (all ones once unpadded) is left out."""
    return tuple(sorted(n for n in row if n != "attention_mask"))


def check_fields(rows: Sequence[dict[str, torch.Tensor]], what: str = "example") -> None:
    """Refuse rows that differ in which model inputs they have: one padded batch holds one set of fields, and a
    field some rows lack would be padded into them or dropped from the others (a state of other inputs).

    Raises:
        ValueError: naming the first row that differs from row 0, the fields each has, and the fix.
    """
    for i, row in enumerate(rows):
        same_fields(rows[0], row, f"{what} 0", f"{what} {i}")


def same_fields(first: dict[str, torch.Tensor], row: dict[str, torch.Tensor], first_name: str, name: str) -> None:
    """``check_fields`` of two rows, named in the message as given."""
    if fields(row) != fields(first):
        odd = sorted(set(fields(first)) ^ set(fields(row)))
        raise ValueError(
            f"{name} has the model inputs {list(fields(row))}, but {first_name} has {list(fields(first))}: one "
            f"batch of model inputs needs the same fields in every row, and {odd} would be dropped from some rows "
            f"or made up for others, giving them the states of other inputs. Give every example the same fields "
            f"(e.g. the tokenizer's token_type_ids for all, or for none)"
        )


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
