"""Serve: a batch in the caller's layout (padded on either side) turned into the top's inputs, and back.

``rec(**model_inputs)`` and ``rec.predict(examples)`` both come here, with the model's pipeline (whose ``lookup``
reads hits and computes misses) and a function that runs its top: ``top(states, attention_mask, extra)``. Under
``torch.compile`` the keying and the store run outside the graph (``prepare`` and ``restore``); the top is compiled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple

import torch
from tqdm.auto import tqdm

from . import batches, data
from .pipeline import content_key

if TYPE_CHECKING:
    from .pipeline import Pipeline

Top = Callable[[torch.Tensor, "torch.Tensor | None", dict], Any]  # (states, attention_mask, extra) -> output

# Outputs of a transformers model with one row per token: (b, t, h) states and logits, (b, t) span logits.
# A 2-dim "logits" is pooled (b, labels): only the names below say that a (b, t) output is per token.
_TOKEN_STATES = ("last_hidden_state", "logits")
_TOKEN_SCORES = ("start_logits", "end_logits")


def per_token(name: str, value: torch.Tensor) -> bool:
    """Whether the output ``name`` holds one row per token (and so follows the caller's layout)."""
    return name in _TOKEN_SCORES and value.dim() == 2 or name in _TOKEN_STATES and value.dim() >= 3


def named_outputs(out: Any) -> dict[str, torch.Tensor]:
    """A model's tensor outputs by name: named outputs by their names, a bare tensor as ``output``, a tuple's
    items as ``output[i]`` (anything else holds none)."""
    if isinstance(out, torch.Tensor):
        return {"output": out}
    if isinstance(out, (tuple, list)):
        out = {f"output[{i}]": v for i, v in enumerate(out)}
    return {n: v for n, v in out.items() if isinstance(v, torch.Tensor)} if hasattr(out, "items") else {}


class Prepared(NamedTuple):
    """The top's inputs for a batch of model inputs: the states (b, n, ...) and their mask, the labels (per-token
    ones moved with the rows), and the caller's layout for ``restore`` (None: rows are not sequences)."""

    states: torch.Tensor
    attention_mask: torch.Tensor | None
    labels: dict[str, torch.Tensor]
    layout: batches.Layout | None


@torch.compiler.disable  # keys, store reads and misses are data-dependent Python: never traced, the top is
def prepare(pipe: Pipeline, dtype: torch.dtype, inputs: dict[str, torch.Tensor | None],
            labels: dict[str, torch.Tensor]) -> Prepared:
    """The top's inputs for a batch of ordinary model inputs (padded on either side), states read or computed by
    ``pipe.lookup``. Per-token labels follow the rows into our layout."""
    inputs = {n: v for n, v in inputs.items() if v is not None}
    unknown = sorted(set(inputs) - set(pipe.input_names))
    if unknown:
        raise TypeError(
            f"unexpected model inputs {unknown}; this model's bottom takes {list(pipe.input_names)} (and labels "
            f"go to the top), so {unknown} would be dropped. Leave them out, or recycle a model that takes them"
        )
    if pipe.key_fn is not None and pipe.keeps:
        raise TypeError(
            "this model keys examples with key=..., which reads fields of the raw example that a batch of model "
            "inputs does not carry; serve raw examples with rec.predict(examples, batch_size=32)"
        )
    if not inputs:
        raise TypeError(f"no model inputs given; this model takes {list(pipe.input_names)} (and labels), or "
                        f"states= from rec.loader batches")
    device = next(iter(inputs.values())).device
    if not pipe.arch.masked:
        rows = [{n: v[i] for n, v in inputs.items()} for i in range(next(iter(inputs.values())).shape[0])]
        return Prepared(batches.stack(pipe.lookup([content_key(r) for r in rows], rows, device, dtype), "states"), None,
                        labels, None)
    layout = batches.Layout.of(inputs)
    placed = layout.states(pipe.positions)  # where each row's states go: its tokens, or its clip's frames
    rows = [data.key_fields(r) for r in layout.rows(inputs)]
    for i, row in enumerate(rows):
        data.check_sequence(row, f"row {i} of the batch")
    pipe.check_rows(rows, lambda i: f"row {i} of the batch")
    states = pipe.lookup([content_key(r) for r in rows], rows, device, dtype)
    per_token = {n: placed.gather(v, data.IGNORE_INDEX) for n, v in labels.items() if _is_per_token(v, placed)}
    return Prepared(*batches.repad(states, to=placed.n), {**labels, **per_token}, placed)


def _is_per_token(v: torch.Tensor, layout: batches.Layout) -> bool:
    # Per-token labels are class ids (b, t); float (b, labels) are multi-label targets, whatever their width.
    return isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[1] == layout.t and not v.is_floating_point()


@torch.compiler.disable
def restore(out: Any, layout: batches.Layout | None) -> Any:
    """Per-token outputs of the top (b, n, ...) put back in the caller's layout (b, t, ...); 0 at padding."""
    if layout is None or layout.right_padded and layout.n == layout.t or not hasattr(out, "keys"):
        return out
    for name, value in list(out.items()):
        if isinstance(value, torch.Tensor) and per_token(name, value):
            out[name] = layout.scatter(value)
        elif name == "hidden_states" and isinstance(value, tuple):
            out[name] = tuple(layout.scatter(v) for v in value)
        elif name == "attentions" and isinstance(value, tuple):  # (b, heads, n, n): rows and columns are tokens
            out[name] = tuple(layout.scatter_square(v) for v in value)
    return out


def predict(pipe: Pipeline, top: Top, device: torch.device, dtype: torch.dtype, examples: Iterable[Any],
            batch_size: int = 32, progress: bool = True) -> list[dict]:
    """Outputs for raw examples, in order, keyed exactly as ``fill`` keys them (``key=`` sees the raw example).

    Returns one dict per example: each output tensor's row, per-token outputs cut to the example's tokens.
    """
    examples = list(examples)
    results: list[dict] = []
    with torch.no_grad(), tqdm(total=len(examples), unit="ex", desc="predict", disable=not progress) as bar:
        for start in range(0, len(examples), batch_size):
            encoded = list(pipe.encode_many(examples[start : start + batch_size], first=start))
            keys, rows = [k for k, _, _ in encoded], [i for _, i, _ in encoded]
            pipe.check_rows(rows, lambda i: f"example {start + i}")
            states = pipe.lookup(keys, rows, device, dtype, first=start)
            results += _per_example(pipe, top, states)
            bar.update(len(encoded))
    return results


def _per_example(pipe: Pipeline, top: Top, states: list[torch.Tensor]) -> list[dict]:
    if not pipe.arch.masked:
        return _rows(top(batches.stack(states, "states"), None, {}), None)
    out = top(*batches.repad(states), {})
    return _rows(out, [s.shape[0] for s in states])


def _rows(out: Any, lengths: list[int] | None) -> list[dict]:
    """One dict per example: named outputs by their names, a bare tensor as ``output``, a tuple's items as
    ``output[i]``; per-token outputs cut to each example's tokens."""
    fields = {n: v for n, v in named_outputs(out).items() if n != "loss"}
    b = next(iter(fields.values())).shape[0]
    rows = []
    for i in range(b):
        cut = lambda n, v: v[i, : lengths[i]] if lengths and per_token(n, v) else v[i]  # noqa: E731
        rows.append({n: cut(n, v) for n, v in fields.items()})
    return rows
