"""Split a transformers model the architecture table does not name: find its block list by running it once on a
synthetic example built from its config, and prove each candidate split on that example before use.

A candidate is a list of modules (``nn.ModuleList``/``nn.Sequential`` of composite blocks) whose items the forward
runs in order, each once, and that sits inside no other such list. Each candidate is cut as a ``blocks=`` override
would cut it, then with the fixes a family may need (a decoder classifier pooling the last real token, embedding
projections and multipliers the stored states already carry), and the first whose halves give the model's outputs
on the synthetic example (``checks.SplitCheck``) is kept; a model none fits is refused, naming every candidate and
why it failed. A found split stays untested: it still checks itself on its first batch and on longer ones.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Iterator

import torch
from torch import nn

from . import arch as arch_table
from .arch import Arch
from .checks import SplitCheck, eval_mode
from .heads import LastTokenClassifier
from .split import Split, split as split_by_table, split_with
from .surgery import resolve_at

SOURCE = "block list found by running the model on a synthetic example, then checked on it"
TOKENS = 10  # the synthetic example's longest row; the second row is 3 tokens shorter (right-padded)
IMAGE = 32  # pixels per side when the config names no image size

# The levels each found model has been checked at: a new level is checked before its split is used.
_CHECKED: weakref.WeakKeyDictionary[nn.Module, set[int]] = weakref.WeakKeyDictionary()


def split(model: nn.Module, at: int | float, blocks: str | list[str] | None = None) -> Split:
    """``split.split``, and for a transformers model outside the table (no ``blocks=``) the split found and checked.

    Raises:
        ValueError: no candidate block list gives the model's outputs (the message names each and why), or the
            model's inputs cannot be made up from its config (the message says what to pass instead).
    """
    if blocks is not None or not wanted(model):
        return split_by_table(model, at, blocks)
    found = arch_table.FOUND.get(model)
    if found is None:
        found, s = discover(model, at)
        arch_table.FOUND[model] = found
    else:
        s = split_with(model, at, found)
    if s.at not in _CHECKED.setdefault(model, set()):
        error, report = _check(model, s, synthetic(model))
        if error is not None:
            raise ValueError(f"{type(model).__name__}: the block list found earlier fails at level {s.at}: {report}")
    _CHECKED[model].add(s.at)
    return s


def wanted(model: nn.Module) -> bool:
    """A transformers model whose family the table neither names nor refuses."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return model_type is not None and model_type not in arch_table.TABLE and model_type not in arch_table.REFUSED


def discover(model: nn.Module, at: int | float) -> tuple[Arch, Split]:
    """The first candidate split of ``model`` at ``at`` that gives its outputs on a synthetic example."""
    arch_table.refuse_unsupported(model)
    batch = synthetic(model)
    lists, skipped = candidates(model, batch)
    tried = list(skipped)
    for path in lists:
        try:
            found = list(variants(model, path))
        except ValueError as err:
            tried.append(f"{path!r}: {err}")
            continue
        for label, arch in found:
            try:
                s = split_with(model, at, arch)
            except Exception as err:  # noqa: BLE001 - a candidate that cannot be cut is a finding
                tried.append(f"{path!r} ({label}): cutting it fails: {type(err).__name__}: {err}")
                continue
            error, report = _check(model, s, batch)
            if error is None:
                _CHECKED.setdefault(model, set()).add(s.at)
                return arch, s
            tried.append(f"{path!r} ({label}): {report}")
    raise ValueError(_refusal(model, tried))


def _refusal(model: nn.Module, tried: list[str]) -> str:
    name, model_type = type(model).__name__, model.config.model_type
    considered = "; ".join(tried) or "none: the forward ran no list of modules in order"
    return (
        f"{name} (model type {model_type!r}) is not in layer_recycling's architecture table, and no block list "
        f"found in it splits exactly. Run on a synthetic example from its config, the lists considered were: "
        f"{considered}. Fix: name the block list with blocks='<dotted.path>' (the split then checks itself), add "
        f"an entry to layer_recycling.arch.TABLE, or wrap the model so that forward() is stem -> blocks -> head."
    )


def _check(model: nn.Module, s: Split, batch: dict[str, torch.Tensor]) -> tuple[ValueError | None, str]:
    """(the refusal or None, what was compared): bottom then top against the model on ``batch``."""
    check = SplitCheck(model, s, SOURCE)
    try:
        check(s.bottom, (), dict(batch))
    except ValueError as err:
        return err, check.report
    return None, check.report


def synthetic(model: nn.Module) -> dict[str, torch.Tensor]:
    """Two examples of the model's main input made up from its config: token ids (rows of ``TOKENS`` and
    ``TOKENS - 3`` ids, right-padded, with the mask) or pixel values of the config's image size.

    Raises:
        ValueError: another kind of input (audio), which the library does not make up.
    """
    config, name = model.config, getattr(model, "main_input_name", "input_ids")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    if name == "input_ids":
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        ids = torch.randint(4, max(5, min(text.vocab_size, 1000)), (2, TOKENS), generator=g)
        pad = getattr(text, "pad_token_id", None)
        ids[ids == pad] = 4 if pad != 4 else 5
        mask = torch.ones(2, TOKENS, dtype=torch.long)
        mask[1, TOKENS - 3 :] = 0
        ids[1, TOKENS - 3 :] = pad if isinstance(pad, int) else 0
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if name == "pixel_values":
        size = getattr(config, "image_size", IMAGE)
        h, w = (size, size) if isinstance(size, int) else tuple(size)[-2:]
        pixels = torch.randn(2, getattr(config, "num_channels", 3), h, w, generator=g)
        return {"pixel_values": pixels.to(device=device, dtype=_float_dtype(model))}
    raise ValueError(
        f"{type(model).__name__} (model type {config.model_type!r}) is not in layer_recycling's architecture "
        f"table, and its input {name!r} is not one the library makes up to find and check a split (token ids or "
        f"pixel values). Name its block list with blocks='<dotted.path>' (the split then checks itself on its "
        f"first batch), or add an entry to layer_recycling.arch.TABLE"
    )


def _float_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def candidates(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """(block lists of ``model.base_model`` the forward runs in order, each item once, outermost and longest
    first; why each other list of composite blocks was passed over)."""
    base = model.base_model
    lists = {p: m for p, m in base.named_modules() if p and _composite(m)}
    calls: list[tuple[str, int]] = []
    handles = [item.register_forward_pre_hook(lambda *_, p=p, i=i: calls.append((p, i)))
               for p, m in lists.items() for i, item in enumerate(m)]
    try:
        with torch.no_grad(), eval_mode(model):
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    ran = {p: [i for q, i in calls if q == p] for p in lists}
    ordered = [p for p in lists if ran[p] == list(range(len(lists[p])))]
    outer = [p for p in ordered if not any(p.startswith(q + ".") for q in ordered)]
    skipped = [f"{p!r}: the forward ran its items {ran[p][:8]}, not each once in order" for p in lists
               if p not in ordered and ran[p] and not any(p.startswith(q + ".") for q in outer)]
    return sorted(outer, key=lambda p: (-len(lists[p]), p.count("."))), skipped


def _composite(m: nn.Module) -> bool:
    # A list of blocks, not of torch.nn layers (a Sequential of conv, norm, activation is one block).
    return type(m) in (nn.ModuleList, nn.Sequential) and len(m) >= 2 and all(
        not type(b).__module__.startswith("torch.nn") for b in m)


def variants(model: nn.Module, path: str) -> Iterator[tuple[str, Arch]]:
    """(label, split of ``model`` at the block list ``path``): as a ``blocks=`` override cuts it, then with the
    fixes that apply to this model, all together and (when several apply) each alone."""
    plain = dataclasses.replace(arch_table.overridden(model.base_model, path), source=SOURCE)
    yield "as found", plain
    fixes = _fixes(model, path, plain)
    if fixes:
        yield " + ".join(fixes), dataclasses.replace(plain, **_merged(fixes.values()))
    if len(fixes) > 1:
        for label, fix in fixes.items():
            yield label, dataclasses.replace(plain, **fix)


def _merged(fixes) -> dict:
    out: dict = {}
    for fix in fixes:
        out.update(fix)
    return out


def _fixes(model: nn.Module, path: str, plain: Arch) -> dict[str, dict]:
    """{label: Arch fields} of the family fixes that may apply: each is kept only if the check then passes."""
    base, fixes = model.base_model, {}
    if type(model).__name__.endswith("ForSequenceClassification") and hasattr(model, "score"):
        fixes["the classifier pools the last real token"] = {"heads": (("ForSequenceClassification",
                                                                       LastTokenClassifier),)}
    projections = _projections(base, path)
    if projections:
        fixes[f"the top skips the embedding projection {', '.join(projections)}"] = {"blank": projections}
    after = _after_blocks(base, path, plain.tail)
    if after:
        fixes[f"the bottom stops at the blocks, before {', '.join(after)}"] = {"tail": plain.tail + after}
    positions = _positions(base, path) if plain.entry == "inputs_embeds" else ()
    if positions:
        fixes[f"the top adds no positions {', '.join(positions)}"] = {"zero": positions}
    scales = tuple(n for n, v in vars(base).items() if "multiplier" in n and "embed" in n and isinstance(v, float))
    if scales and plain.entry == "inputs_embeds":
        fixes[f"the top leaves out {', '.join(scales)}"] = {"unscale": scales}
    return fixes


def _after_blocks(base: nn.Module, path: str, tail: tuple[str, ...]) -> tuple[str, ...]:
    """Modules registered after the block list in the module that holds it (EfficientNet's ``top_conv``,
    ``top_bn``): the bottom must stop at the blocks, the top runs them."""
    owner_path, _, name = path.rpartition(".")
    owner = base.get_submodule(owner_path) if owner_path else base
    names = list(owner._modules)
    prefix = f"{owner_path}." if owner_path else ""
    return tuple(prefix + n for n in names[names.index(name) + 1 :]
                 if owner._modules[n] is not None and prefix + n not in tail)


def _positions(base: nn.Module, path: str) -> tuple[str, ...]:
    """``nn.Embedding`` children of the base registered before the blocks, other than the token embeddings: learned
    positions its forward adds to ``inputs_embeds`` (GPT-2's ``wpe``), which the states carry."""
    words = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    head = path.partition(".")[0]
    names = list(base._modules)
    return tuple(n for n in names[: names.index(head)]
                 if isinstance(base._modules[n], nn.Embedding) and base._modules[n] is not words)


def _projections(base: nn.Module, path: str) -> tuple[str, ...]:
    """``nn.Linear`` children registered before the block list, at its level and above: projections of the
    embeddings to the blocks' width (RoFormer's, ELECTRA's ``embeddings_project``), which the states carry."""
    found, owner, prefix = [], base, ""
    for part in path.split("."):
        for name, child in owner.named_children():
            if name == part:
                break
            if isinstance(child, nn.Linear):
                found.append(f"{prefix}{name}")
        owner, prefix = getattr(owner, part), f"{prefix}{part}."
    return tuple(found)
