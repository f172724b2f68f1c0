"""Model surgery: shallow copies of a module tree with some paths replaced, and the block count ``at`` means.

A leaf module: the splitting code (``split``, ``halves``) builds on it and it imports nothing of ours.
"""

from __future__ import annotations

import copy
import numbers

from torch import nn


def resolve_at(at: int | float, num_layers: int) -> int:
    """The block count ``at`` means: an int in [0, L] is itself, a fraction (level) in [0, 1] is rounded.

    A fraction f recycles ``round(f * L)`` blocks, rounding halves to even (the paper's MiniLM levels:
    25/50/75% of 6 give 2/3/4; of 12 give 3/6/9). A fraction strictly between 0 and 1 always recycles
    at least one block and leaves at least one: it never silently becomes 0 or L.
    """
    if isinstance(at, bool) or not isinstance(at, numbers.Real):
        raise TypeError(f"at={at!r} ({type(at).__name__}): expected an int block count or a float fraction")
    if isinstance(at, numbers.Integral):
        if not 0 <= at <= num_layers:
            raise ValueError(f"at={at} blocks: expected 0..{num_layers} (the model has {num_layers} blocks)")
        return int(at)
    if not 0.0 <= at <= 1.0:
        hint = f"; for {int(at)} blocks pass the int {int(at)}" if float(at).is_integer() else ""
        raise ValueError(f"at={at}: a fraction must lie in [0, 1]{hint}")
    k = round(at * num_layers)
    if 0.0 < at < 1.0 and num_layers > 1:
        k = min(max(k, 1), num_layers - 1)
    return k


def shallow(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with its own child/parameter dicts, sharing every tensor."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    return clone


def replace(root: nn.Module, edits: dict[str, nn.Module | None]) -> nn.Module:
    """A shallow copy of ``root`` with the modules at the dotted paths in ``edits`` replaced."""
    copies = {"": shallow(root)}
    for path, new in edits.items():
        parts = path.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            if prefix not in copies:
                parent = copies[".".join(parts[: i - 1])]
                copies[prefix] = shallow(getattr(parent, parts[i - 1]))
                setattr(parent, parts[i - 1], copies[prefix])
        setattr(copies[".".join(parts[:-1])], parts[-1], new)
    return copies[""]


def get(module: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted ``path`` ("" is ``module`` itself)."""
    return module.get_submodule(path) if path else module


def join(*parts: str) -> str:
    """Dotted path of the non-empty ``parts``."""
    return ".".join(p for p in parts if p)
