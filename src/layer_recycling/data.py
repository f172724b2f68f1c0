"""Examples in: one-example dicts to (unpadded model inputs, labels), checked; what decides an example's key.

Padding may sit on either side: an example's real tokens are the contiguous run of ones in its attention mask
(``spans``). Batches are ``batches``'s: collation, the caller's layout and back, samplers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch

LABEL_NAMES = ("labels", "start_positions", "end_positions")
_LABEL_ALIASES = {"label": "labels", "label_ids": "labels"}  # as the HF Trainer renames them
IGNORE_INDEX = -100  # what transformers' losses skip: padding of per-token labels
# one image (c, h, w); one clip's features (mels, frames); a spectrogram (frames, mels) as AST takes it
_EXAMPLE_DIMS = {"pixel_values": 3, "input_features": 2, "input_values": 2}


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
