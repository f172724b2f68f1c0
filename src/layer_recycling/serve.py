"""Serve: states for a batch from the store (hits) or the bottom (misses), then the top, in the caller's layout.

``rec(**model_inputs)`` and ``rec.predict(examples)`` both come here; the model's own forward only runs the top.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from . import data
from .fill import bottom_states, check_stored, dtype_of, put, refuse_stale
from .keys import digest

if TYPE_CHECKING:
    from .model import Recycled

# Outputs of a transformers model with one row per token: (b, t, h) states and logits, (b, t) span logits.
# A 2-dim "logits" is pooled (b, labels): only the names below say that a (b, t) output is per token.
_TOKEN_STATES = ("last_hidden_state", "logits")
_TOKEN_SCORES = ("start_logits", "end_logits")


def per_token(name: str, value: torch.Tensor) -> bool:
    """Whether the output ``name`` holds one row per token (and so follows the caller's layout)."""
    return name in _TOKEN_SCORES and value.dim() == 2 or name in _TOKEN_STATES and value.dim() >= 3


def lookup(rec: Recycled, keys: Sequence[str], rows: Sequence[dict[str, torch.Tensor]],
           device: torch.device) -> list[torch.Tensor]:
    """The states of ``rows`` (unpadded inputs, keyed ``keys``): hits from the store, misses from the bottom."""
    dtype = dtype_of(rec.top)
    unique = list(dict.fromkeys(keys))
    held = rec.store.contains_many(unique)
    hits = [k for k, h in zip(unique, held) if h]
    if rec.key_fn is not None:  # a user's key: the hits must have been computed from these inputs
        row_of = dict(zip(keys, rows))
        refuse_stale(check_stored(rec, hits, [row_of[k] for k in hits]))
    found = dict(zip(hits, rec.store.get_many(hits, device=device, dtype=dtype)))
    misses = {k: r for k, r in zip(keys, rows) if k not in found}
    if misses:
        states = bottom_states(rec, list(misses.values()), device)
        found.update(zip(misses, (s.to(dtype) for s in states)))
        if rec.config.store_misses and rec.store.keeps:
            put(rec, list(misses), states, list(misses.values()))  # readable at once; durable at its next commit
            rec.stats.stored += len(misses)
    rec.stats.misses += sum(k in misses for k in keys)
    rec.stats.hits += sum(k not in misses for k in keys)
    return [found[k] for k in keys]


def serve(rec: Recycled, inputs: dict[str, torch.Tensor], extra: dict[str, Any]) -> Any:
    """The model's output for a batch of ordinary model inputs (padded on either side).

    ``extra``: labels and output options for the top; per-token labels follow the rows into the library's layout.
    """
    inputs = {n: v for n, v in inputs.items() if v is not None}
    labels = dict(extra)
    unknown = sorted(set(inputs) - set(rec.input_names))
    if unknown:
        raise TypeError(f"unexpected model inputs {unknown}; this model takes {list(rec.input_names)} and labels")
    if rec.key_fn is not None and rec.store.keeps:
        raise TypeError(
            "this model keys examples with key=..., which reads fields of the raw example that a batch of model "
            "inputs does not carry; serve raw examples with rec.predict(examples, batch_size=32)"
        )
    device = next(iter(inputs.values())).device
    if not rec.arch.masked:
        rows = [{n: v[i] for n, v in inputs.items()} for i in range(next(iter(inputs.values())).shape[0])]
        return rec(states=torch.stack(lookup(rec, [row_key(r) for r in rows], rows, device)), **labels)
    layout = data.Layout.of(inputs)
    rows = [data.key_fields(r) for r in layout.rows(inputs)]
    states = lookup(rec, [row_key(r) for r in rows], rows, device)
    per_token = {n: layout.gather(v, data.IGNORE_INDEX) for n, v in labels.items() if _is_per_token(v, layout)}
    mask = data.mask_for(layout.lengths, layout.n, device)
    out = rec(states=data.pad(states, to=layout.n), attention_mask=mask, **{**labels, **per_token})
    return restore(out, layout)


def row_key(inputs: dict[str, torch.Tensor]) -> str:
    """The default key of one unpadded example: a digest of the inputs that reach the bottom."""
    return digest(data.key_fields(inputs))


def _is_per_token(v: torch.Tensor, layout: data.Layout) -> bool:
    # Per-token labels are class ids (b, t); float (b, labels) are multi-label targets, whatever their width.
    return isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[1] == layout.t and not v.is_floating_point()


def restore(out: Any, layout: data.Layout) -> Any:
    """Per-token outputs of the top (b, n, ...) put back in the caller's layout (b, t, ...); 0 at padding."""
    if layout.right_padded and layout.n == layout.t or not hasattr(out, "keys"):
        return out
    for name, value in list(out.items()):
        if isinstance(value, torch.Tensor) and per_token(name, value):
            out[name] = layout.scatter(value)
        elif name == "hidden_states" and isinstance(value, tuple):
            out[name] = tuple(layout.scatter(v) for v in value)
    return out


def predict(rec: Recycled, examples: Iterable[Any], batch_size: int = 32, progress: bool = True) -> list[dict]:
    """Outputs for raw examples, in order, keyed exactly as ``fill`` keys them (``key=`` sees the raw example).

    Returns one dict per example: each output tensor's row, per-token outputs cut to the example's tokens.
    """
    examples = list(examples)
    device = next((p.device for p in rec.top.parameters()), torch.device("cpu"))
    results: list[dict] = []
    with torch.no_grad(), tqdm(total=len(examples), unit="ex", desc="predict", disable=not progress) as bar:
        for start in range(0, len(examples), batch_size):
            encoded = [rec.encode(e) for e in examples[start : start + batch_size]]
            keys, rows = [k for k, _, _ in encoded], [i for _, i, _ in encoded]
            states = lookup(rec, keys, rows, device)
            results += _per_example(rec, states)
            bar.update(len(encoded))
    return results


def _per_example(rec: Recycled, states: list[torch.Tensor]) -> list[dict]:
    if not rec.arch.masked:
        out = rec(states=torch.stack(states))
        return [{"output": row} for row in out] if isinstance(out, torch.Tensor) else _rows(out, None)
    lengths = [s.shape[0] for s in states]
    out = rec(states=data.pad(states), attention_mask=data.mask_for(lengths, max(lengths), states[0].device))
    return _rows(out, lengths)


def _rows(out: Any, lengths: list[int] | None) -> list[dict]:
    fields = {n: v for n, v in out.items() if isinstance(v, torch.Tensor) and n != "loss"}
    b = next(iter(fields.values())).shape[0]
    rows = []
    for i in range(b):
        cut = lambda n, v: v[i, : lengths[i]] if lengths and per_token(n, v) else v[i]  # noqa: E731
        rows.append({n: cut(n, v) for n, v in fields.items()})
    return rows
