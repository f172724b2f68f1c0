"""Splits that no test of this library proves exact check themselves: on the first batch their bottom sees (and
on much longer ones later), or at construction on ``recycle(..., example=...)``.

A generic split assumes ``forward()`` is stem -> blocks -> head; a ``blocks=`` override assumes nothing runs
between the block list and the head; an entry a user adds to the table assumes the family is like another.
Each can be wrong without an error (a ViT that adds a class token in ``forward()``, an encoder with a final norm
after its blocks), and then every served output would be wrong. The tolerance is absolute: both paths run the same
modules on the same rows, so only rounding may differ, and a final norm applied twice moves outputs by ~1e-4.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .split import Split

SAMPLE = 4  # examples compared: the check runs the whole model once more, and bottom then top, on this many
LONGER = 2  # token sequences are compared again on a batch this many times as long as any compared before
ATOL = 1e-5  # absolute, on every output in float32: both paths run the same modules in the same order


class SplitCheck:
    """A forward pre-hook on the bottom: its first call compares bottom -> top with the model on a few rows.

    Token sequences are compared again on a batch more than ``LONGER`` times as long as the longest compared so
    far: a sliding window or a position scheme the split gets wrong shows only on inputs longer than the window
    (a few checks in all, each on ``SAMPLE`` rows). Other inputs are compared once, and a passing check removes
    itself. A failing check raises ``ValueError`` on that call and on every later call.
    """

    def __init__(self, model: nn.Module, split: Split, source: str):
        self.model, self.split, self.source = model, split, source  # source: where the block list came from
        self.error: ValueError | None = None
        self.report = "not run yet: it runs on the first batch the bottom sees"  # what was compared, and the result
        self.checked: int | None = None  # the longest sequence compared so far (0 for inputs without a length)
        self._running = False
        self._handle = None

    def attach(self, bottom: nn.Module) -> SplitCheck:
        self._handle = bottom.register_forward_pre_hook(self, with_kwargs=True)
        return self

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._running:  # the check's own call of the bottom
            return None
        length = _length(kwargs) if self.split.arch.masked else None
        due = self.checked is None or length is not None and length > LONGER * self.checked
        if self.error is None and due:
            self._running = True
            try:
                self.error = self._compare(args, kwargs)
            finally:
                self._running = False
            self.checked = length or 0
        if self.error is not None:
            raise self.error
        if length is None and self._handle is not None:
            self._handle.remove()
        return None

    def _compare(self, args: tuple, kwargs: dict) -> ValueError | None:
        if self.split.arch.frames is None:
            return self._compare_batch(args, kwargs)
        # Clips stored as frames: the model on a padded batch is not each clip alone (its feature encoder's group
        # norm sees the padding), and each clip alone is what the split must give. So each is compared alone.
        from .batches import Layout

        clips = Layout.of(kwargs).rows({"input_values": kwargs["input_values"]})[:SAMPLE]
        reports = []
        for i, clip in enumerate(clips):
            error = self._compare_batch((), {"input_values": clip["input_values"][None]})
            reports.append(f"clip {i} alone: {self.report}")
            if error is not None:
                return error
        self.report = "; ".join(reports)
        return None

    def _compare_batch(self, args: tuple, kwargs: dict) -> ValueError | None:
        b = _batch_size(args, kwargs)
        args = tuple(_head(a, b) for a in args)
        kwargs = {n: _head(v, b) for n, v in kwargs.items()}
        mask = kwargs.get("attention_mask") if self.split.arch.masked else None
        with torch.no_grad(), eval_mode(self.model, self.split.bottom, self.split.top):
            want = self._reference(args, kwargs)
            try:
                got = self.split.top(self.split.bottom(*args, **kwargs),
                                     **({"attention_mask": mask} if mask is not None else {}))
            except Exception as err:  # noqa: BLE001 - any failure of the halves is the finding
                self.report = f"bottom then top fails on {min(b, SAMPLE)} example(s): {type(err).__name__}: {err}"
                return self._refusal(self.report)
            alone = self._alone(kwargs, mask, got) if mask is not None else None
        diff, name, compared = _max_diff(want, got, mask)
        self.report = (f"compared {compared} of the model with bottom then top on {min(b, SAMPLE)} example(s): max "
                       f"abs diff {diff:.3g}{' in ' + name if name else ''} (tolerance {ATOL:g}, absolute)")
        if alone is not None:
            self.report += f"; the model on example {alone[1]} alone against its padded row: max abs diff {alone[0]:.3g}"
        if diff <= ATOL and (alone is None or alone[0] <= ATOL):  # also refuses NaN
            return None
        padding = "" if alone is None or alone[0] <= ATOL else (
            " (the model's output depends on how the batch was padded, which a stored state cannot follow: a "
            "position scheme that reads the padded length?)")
        return self._refusal(f"{self.report}, over the tolerance{padding}")

    def _alone(self, kwargs: dict, mask: torch.Tensor, got: Any) -> tuple[float, int] | None:
        """(max abs diff, row) of the most padded row of bottom then top against the model on that example alone;
        None when no row is padded (or the model cannot run it alone: the batch comparison stands)."""
        from .data import spans
        from .serve import named_outputs, per_token

        lengths = mask.sum(dim=1)
        i, b, t = int(lengths.argmin()), mask.shape[0], mask.shape[1]
        if int(lengths[i]) == t:
            return None
        (start,), (n,) = spans(mask[i : i + 1])
        row = lambda v: v[i : i + 1, start : start + n] if v.dim() >= 2 and v.shape[1] == t else v[i : i + 1]  # noqa: E731
        inputs = {k: row(v) if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == b else v
                  for k, v in kwargs.items()}
        try:
            alone = self._reference((), inputs)
        except Exception:  # noqa: BLE001 - a model that runs only in batches: nothing to compare
            return None
        cut = {k: row(v) if per_token(k, v) else v[i : i + 1] for k, v in named_outputs(got).items()}
        return _max_diff(alone, cut, None)[0], i

    def _reference(self, args: tuple, kwargs: dict) -> Any:
        """The whole model's output, with the top's untied copies in place of the tied originals: the top may
        have trained before the bottom's first call (a store filled elsewhere)."""
        own = dict(self.model.named_parameters(remove_duplicate=False))
        copies = {n: self.split.top.model.get_parameter(n) for n in self.split.untied if n in own}
        if not copies:
            return self.model(*args, **kwargs)
        return torch.func.functional_call(self.model, copies, args, kwargs, tie_weights=False)

    def _refusal(self, what: str) -> ValueError:
        s = self.split
        return ValueError(
            f"the split of {type(self.model).__name__} at {s.at} of {s.num_layers} blocks (blocks={s.arch.blocks!r}, "
            f"from the {self.source}) is not what the model's forward() computes: {what}. "
            f"A split that no test of this library proves assumes forward() is stem -> blocks -> head, with no work "
            f"between them outside the model's modules (a class token, a position embedding) and nothing after the "
            f"block list but the head (a final norm). Fix: name the block list(s) with blocks='<dotted.path>' (or a "
            f"list of stage lists), add an entry to layer_recycling.arch.TABLE, or wrap the model so that forward() "
            f"is just stem -> blocks -> head. This check runs the whole model once more on up to {SAMPLE} examples; "
            f"for a model too large to run twice, pass check_split=False to skip it (at your own risk)."
        )


def check_example(rec: Any, example: Any) -> str:
    """Run ``rec``'s self-check now, on ``example`` (one example as ``fill`` takes it, or a list of examples).

    A split the table proves runs it too: it costs one more forward. Returns what was compared.

    Raises:
        ValueError: bottom then top differs from the model on these examples (the split is refused).
    """
    from . import batches

    pipe = rec.pipeline
    rows = [pipe.encode(e)[1] for e in (example if isinstance(example, list) else [example])]
    if not rows:
        raise ValueError("example=[]: expected one example (a dict of model inputs, or an (input, label) pair) "
                         "or a non-empty list of them")
    batch = batches.collate_inputs(rows, pipe.pad_id, ragged=pipe.arch.masked)
    batch = {n: v.to(pipe.device) for n, v in batch.items()}
    check = rec.split_check
    if check is None:
        check = rec.split_check = SplitCheck(pipe.source, pipe.split, pipe.arch.source)
    args, kwargs = (tuple(batch.values()), {}) if pipe.arch.generic else ((), batch)
    check(pipe.bottom, args, kwargs)  # raises the refusal; a passing check removes its hook
    return check.report


def source_of(arch: Any, overridden: bool) -> str:
    """Where a split's block list came from, for the refusal."""
    return "blocks= override" if overridden else arch.source


def _length(kwargs: dict) -> int | None:
    """Tokens per row of a batch of token sequences (its attention mask's or ids' width), None if it has none."""
    seq = kwargs.get("attention_mask", kwargs.get("input_ids"))
    return int(seq.shape[1]) if isinstance(seq, torch.Tensor) and seq.dim() == 2 else None


def _batch_size(args: tuple, kwargs: dict) -> int:
    first = next(v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))
    return first.shape[0] if first.dim() else 1


def _head(value: Any, b: int) -> Any:
    """The first ``SAMPLE`` rows of a batched tensor; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == b:
        return value[:SAMPLE]
    return value


@contextlib.contextmanager
def eval_mode(*modules: nn.Module):
    """Eval mode for the comparison (dropout off, norm statistics frozen); the modes are restored after."""
    modes = {m: m.training for root in modules for m in root.modules()}
    try:
        for root in modules:
            root.eval()
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def _max_diff(want: Any, got: Any, mask: torch.Tensor | None) -> tuple[float, str, str]:
    """(largest abs difference, the output it is in, what was compared); inf where an output is missing."""
    from .serve import named_outputs

    a_all, b_all = named_outputs(want), named_outputs(got)
    compared = ", ".join(f"{n} {tuple(v.shape)}" for n, v in a_all.items()) or "no tensor outputs"
    worst, where = 0.0, ""
    for name, a in a_all.items():
        b = b_all.get(name)
        if b is None or a.shape != b.shape:
            return float("inf"), f"{name} (shape {tuple(a.shape)} from the model, "\
                f"{'none' if b is None else tuple(b.shape)} from the split)", compared
        if mask is not None and a.dim() >= 2 and a.shape[:2] == mask.shape:  # per-token: real positions only
            a, b = a[mask.bool()], b[mask.bool()]
        if a.numel() == 0:
            continue
        diff = float((a.float() - b.float()).abs().max())
        if math.isnan(diff) or diff > worst:
            worst, where = diff, name
        if math.isnan(worst):
            break
    return worst, where, compared
