"""The generic rule: the block list of a plain ``nn.Module`` that no table entry names, found by its structure."""

from __future__ import annotations

import re

from torch import nn

from .surgery import get


def find_blocks(model: nn.Module) -> str | tuple[str, ...]:
    """The block list of ``model``: its largest ``ModuleList``/``Sequential`` child, or a run of stage lists.

    Stage lists (ResNet's ``layer1``..``layer4``, torchvision EfficientNet's ``features.1``..``features.7``) are
    consecutive plain lists named ``<prefix><i>`` whose items are composite blocks; when they hold more blocks
    than the largest single list, their blocks count as one list, so levels mean the same fraction of the network.
    """
    best, best_len = None, 1
    for name, child in model.named_children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)) and len(child) > best_len:
            best, best_len = name, len(child)
    stages = _stage_run(model) or (_stage_run(get(model, best), best) if best else None)
    if stages and sum(len(get(model, p)) for p in stages) > best_len:
        return stages
    if isinstance(model, nn.Sequential) and best is None:
        return ""
    if best is None:
        found = ", ".join(f"{n}: {type(c).__name__}" for n, c in model.named_children()) or "no children"
        raise ValueError(
            f"could not find a block list in {type(model).__name__} (children: {found}). Expected a child "
            f"nn.ModuleList or nn.Sequential of at least 2 blocks; name it with blocks='features' "
            f"(a dotted path, or a list of them for stage lists), or wrap the model in nn.Sequential."
        )
    return best


_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def _stage_run(owner: nn.Module, prefix: str = "") -> tuple[str, ...] | None:
    """The longest run of consecutive children of ``owner`` that are stage lists named ``<p>1, <p>2, ...``."""
    runs, run, last = [], [], None
    for name, child in owner.named_children():
        m = _NUMBERED.match(name)
        key = (m.group(1), int(m.group(2))) if m and _is_stage(child) else None
        if key and run and last and key == (last[0], last[1] + 1):
            run.append(name)
        else:
            runs.append(run)
            run = [name] if key else []
        last = key
    runs.append(run)
    best = max(runs, key=lambda r: sum(len(getattr(owner, n)) for n in r))
    return tuple(f"{prefix}.{n}" if prefix else n for n in best) if len(best) >= 2 else None


def _is_stage(child: nn.Module) -> bool:
    # A plain list of composite blocks; a list of torch.nn layers (conv, norm, act) is one block, not a stage.
    return type(child) in (nn.Sequential, nn.ModuleList) and len(child) > 0 and all(
        not type(b).__module__.startswith("torch.nn") for b in child
    )
