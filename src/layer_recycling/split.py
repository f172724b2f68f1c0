"""Cut a model at block k into a frozen bottom and a trainable top that share the model's parameters.

The user's model is never changed: both halves are shallow copies whose module trees differ from the
original only along the edited paths, so every parameter tensor is shared and the original still runs.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn

from . import halves
from .halves import Bottom, Seam, Top, Zeros
from .arch import Arch, lookup
from .surgery import get, join, replace, resolve_at, shallow


@dataclasses.dataclass
class Split:
    """The two halves of a model cut at block ``at`` of ``num_layers``."""

    bottom: nn.Module
    top: Top
    at: int
    num_layers: int
    arch: Arch
    untied: tuple[str, ...] = ()  # top parameters (dotted names) that are trainable copies of the model's

    @property
    def level(self) -> float:
        """The recycled fraction of blocks."""
        return self.at / self.num_layers if self.num_layers else 0.0


def split(model: nn.Module, at: int | float, blocks: str | list[str] | None = None) -> Split:
    """Cut ``model`` after ``at`` blocks (int count or fraction, see ``resolve_at``).

    Args:
        model: a transformers model from the architecture table (base or task head), or any ``nn.Module``
            whose blocks are an ``nn.ModuleList``/``nn.Sequential``.
        at: blocks to recycle (see ``resolve_at``).
        blocks: dotted path of the block list, overriding the table or the automatic search; for a generic model
            a list of consecutive stage lists (``["layer1", "layer2", "layer3", "layer4"]``) counted as one.
    Raises:
        ValueError: unknown architecture or bad level; the message says how to name the block list.
    """
    return split_with(model, at, lookup(model, blocks))


def split_with(model: nn.Module, at: int | float, arch: Arch) -> Split:
    """Cut ``model`` after ``at`` blocks as ``arch`` says (an entry of the table, or one found by ``discover``)."""
    hooks_before_copies(model)
    if arch.build is not None:
        bottom, top, k, num_layers = arch.build(model, at)  # a top the build fed by keyword is a Top already
        return Split(bottom=bottom, top=top if isinstance(top, Top) else Top(top, None), at=k, num_layers=num_layers,
                     arch=arch)
    if arch.generic:
        return _split_generic(model, at, arch)
    base = model.base_model
    prefix = "" if base is model else model.base_model_prefix
    layers = _block_list(base, arch.blocks)
    k = resolve_at(at, len(layers))
    bottom_edits = {arch.blocks: nn.ModuleList(layers[:k])}
    bottom_edits.update({t: nn.Identity() for t in arch.tail if _has(base, t)})
    if arch.bottom_fix is not None:
        bottom_edits.update(arch.bottom_fix(base, k))
    bottom = Bottom(replace(base, bottom_edits))
    top_model = replace(model, {join(prefix, p): m for p, m in _above(base, arch, layers, k).items()})
    halves.shift_layer_types(get(top_model, prefix), k, len(layers))
    halves.unscale(get(top_model, prefix), arch.unscale)
    for suffix, wrap in arch.heads:  # heads that read input_ids are restated on states
        if type(model).__name__.endswith(suffix):
            top_model = wrap(top_model)
    top = Top(top_model, arch.entry)
    return Split(bottom=bottom, top=top, at=k, num_layers=len(layers), arch=arch)


def hooks_before_copies(model: nn.Module) -> None:
    """Install transformers' output-recording hooks on ``model`` now, before its halves copy it.

    transformers (5.x) records ``output_hidden_states`` and ``output_attentions`` with forward hooks it installs on a
    model's blocks at its first call, and marks the model as hooked. The halves are shallow copies sharing those
    blocks: a copy made before the first call carries no mark and would install a second set, and every block of
    the top would then be recorded twice. Installed first, every copy inherits the mark and the blocks keep one set.
    """
    try:
        from transformers import PreTrainedModel
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:  # no transformers, or one that records outputs in its forward loops (nothing to share)
        return
    if isinstance(model, PreTrainedModel):
        maybe_install_capturing_hooks(model)


def _above(base: nn.Module, arch: Arch, layers: nn.ModuleList, k: int) -> dict[str, nn.Module | None]:
    """Edits of ``base`` that feed it the states at block k: the blocks from k on, the stem seamed or blanked."""
    edits: dict[str, nn.Module | None] = {arch.blocks: nn.ModuleList(layers[k:])}
    for name in arch.seam:
        edits[name] = Seam(get(base, name), arch.entry, arch.keep)
    edits.update({n: nn.Identity() for n in arch.blank if _has(base, n)})
    edits.update({n: Zeros(get(base, n)) for n in arch.zero})
    if arch.top_fix is not None:
        edits.update(arch.top_fix(base, k))
    return edits


class Middle(nn.Module):
    """Blocks j..k of a model: (states at block j (b, t, h), attention_mask (b, t)) -> states at block k."""

    def __init__(self, run: nn.Module, entry: str | None):
        super().__init__()
        self.run, self.entry = run, entry

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.entry is None:
            return self.run(states)
        return self.run(**{self.entry: states}, attention_mask=attention_mask)


def middle(model: nn.Module, j: int, k: int, blocks: str | list[str] | None = None) -> Middle:
    """The blocks ``j..k`` of ``model`` (0 <= j < k <= L), fed the states a split at ``j`` stores.

    A store filled at level j feeds a fill at level k through it: only these blocks run.
    """
    arch = lookup(model, blocks)
    hooks_before_copies(model)
    if arch.build is not None:
        raise ValueError(f"{type(model).__name__} is split by a hand-made builder: fill each level from scratch")
    root = model if arch.generic else model.base_model
    paths = arch.blocks if isinstance(arch.blocks, tuple) else (arch.blocks,)
    layers = [b for p in paths for b in _block_list(root, p)]
    if not 0 <= j < k <= len(layers):
        raise ValueError(f"blocks {j}..{k}: expected 0 <= j < k <= {len(layers)} (the model has {len(layers)} blocks)")
    if arch.generic:
        return Middle(halves.Chain(*layers[j:k]), None)
    edits = {**_above(root, arch, layers, j), arch.blocks: nn.ModuleList(layers[j:k])}
    edits.update({t: nn.Identity() for t in arch.tail if _has(root, t)})
    if arch.bottom_fix is not None:  # the tail a family's bottom drops (OPT's, T5's final norm)
        edits.update(arch.bottom_fix(root, k))
    run = replace(root, edits)
    halves.shift_layer_types(run, j, len(layers))
    halves.unscale(run, arch.unscale)
    return Middle(Bottom(run), arch.entry)


def _has(root: nn.Module, path: str) -> bool:
    """``root`` has a module at the dotted ``path`` (a tail the family may lack, such as an optional pooler)."""
    try:
        return get(root, path) is not None
    except AttributeError:
        return False


def _block_list(root: nn.Module, path: str) -> nn.ModuleList | nn.Sequential:
    try:
        layers = get(root, path)
    except AttributeError:
        raise ValueError(
            f"{type(root).__name__} has no block list at {path!r}; pass blocks='<dotted.path>' naming its "
            f"nn.ModuleList of blocks"
        ) from None
    if not isinstance(layers, (nn.ModuleList, nn.Sequential)):
        raise ValueError(
            f"{type(root).__name__}.{path} is a {type(layers).__name__}, expected nn.ModuleList or "
            f"nn.Sequential of blocks; pass blocks='<dotted.path>' naming the block list"
        )
    return layers


def _split_generic(model: nn.Module, at: int | float, arch: Arch) -> Split:
    """Any module: the modules registered before the block list(s) form the stem, applied in registration order."""
    paths = arch.blocks if isinstance(arch.blocks, tuple) else (arch.blocks,)
    lists = [_block_list(model, p) for p in paths]
    blocks = [b for layers in lists for b in layers]
    k = resolve_at(at, len(blocks))
    if paths == ("",):  # the model is itself the sequence of blocks
        bottom, top = nn.Sequential(*blocks[:k]), nn.Sequential(*blocks[k:])
        return Split(bottom=bottom, top=Top(top, None), at=k, num_layers=len(blocks), arch=arch)
    _check_consecutive(model, paths)
    stem = _stem(model, paths[0])
    bottom = halves.Chain(*stem.values(), *blocks[:k])
    edits: dict[str, nn.Module | None] = {p: nn.Identity() for p in stem}
    done = 0
    for path, layers in zip(paths, lists):  # each list keeps its blocks past the k-th of the whole run
        rest = list(layers)[max(k - done, 0) :]
        edits[path] = type(layers)(*rest) if isinstance(layers, nn.Sequential) else nn.ModuleList(rest)
        done += len(layers)
    return Split(bottom=bottom, top=Top(replace(model, edits), None), at=k, num_layers=len(blocks), arch=arch)


def _stem(model: nn.Module, path: str) -> dict[str, nn.Module]:
    """{dotted path: module} registered before ``path`` at every level above it, outermost first."""
    stem, owner, prefix = {}, model, ""
    for part in path.split("."):
        for name, child in owner.named_children():
            if name == part:
                break
            stem[join(prefix, name)] = child
        owner, prefix = getattr(owner, part), join(prefix, part)
    return stem


def _check_consecutive(model: nn.Module, paths: tuple[str, ...]) -> None:
    # Modules between two stage lists would run in neither half, or twice: refuse such a list of paths.
    owner_path = paths[0].rpartition(".")[0]
    order = [n for n, _ in get(model, owner_path).named_children()]
    mine = [p.rpartition(".")[2] for p in paths]  # each path exists: _block_list checked it
    start = order.index(mine[0])
    if any(p.rpartition(".")[0] != owner_path for p in paths) or order[start : start + len(mine)] != mine:
        raise ValueError(
            f"blocks={list(paths)}: several block lists must be consecutive children of one module, in order "
            f"(e.g. ['layer1', 'layer2', 'layer3', 'layer4']); {type(model).__name__} has "
            f"{owner_path or 'children'} {order}. Pass consecutive stage lists, or one list"
        )


def tied(s: Split, model: nn.Module | None = None) -> dict[str, str]:
    """Parameters of modules only the top runs that are the same tensor as a bottom parameter: {top: bottom name}.

    The top still holds stem modules it never runs (shared with the bottom): those are not counted. What is
    left is a head tied to a frozen module, such as an LM head tied to the input embeddings (GPT-2, Llama).
    Bottom parameters are named as in ``model`` (its first name for a shared tensor) when it is given.
    """
    in_bottom = {id(m) for m in s.bottom.modules()}
    bottom = {id(p): n for n, p in s.bottom.named_parameters(remove_duplicate=False)}
    if model is not None:
        bottom.update({id(p): n for n, p in model.named_parameters() if id(p) in bottom})
    found = {}
    for path, module in s.top.model.named_modules(remove_duplicate=False):
        if id(module) not in in_bottom:
            found.update({join(path, n): bottom[id(p)] for n, p in module.named_parameters(recurse=False)
                          if id(p) in bottom})
    return found


def untie(s: Split, names: list[str]) -> Split:
    """``s`` with the top's parameters ``names`` replaced by trainable copies; the user's model is unchanged."""
    edits = {}
    for name in names:
        path, _, attr = name.rpartition(".")
        module = edits.get(path) or shallow(get(s.top.model, path))
        module._parameters[attr] = nn.Parameter(module._parameters[attr].detach().clone())
        edits[path] = module
    root = edits.pop("", s.top.model)  # a parameter of the top model itself
    return dataclasses.replace(s, top=Top(replace(root, edits), s.top.entry), untied=tuple(names))


def resolve_ties(s: Split, untie_them: bool, model: nn.Module | None = None) -> Split:
    """Untie the top's parameters shared with the frozen bottom when ``untie_them``, else warn, naming them."""
    shared = tied(s, model)
    if not shared:
        return s
    if untie_them:
        return untie(s, list(shared))
    pairs = ", ".join(f"{t} (= {b})" for t, b in shared.items())
    warnings.warn(
        f"the trainable top has parameters tied to the frozen bottom: {pairs}. They stay frozen with the bottom "
        f"and will not train (an LM head tied to the input embeddings). Pass untie=True "
        f"(lr.recycle(model, at, untie=True)) to give the top its own trainable copy; your model is not changed "
        f"and stored states stay valid.",
        stacklevel=4,  # the caller of recycle()
    )
    return s
