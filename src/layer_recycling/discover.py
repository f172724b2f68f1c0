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
from .checks import SplitCheck
from .heads import LastTokenClassifier
from .split import Split, split as split_by_table, split_with
from .tracing import Trace, synthetic, trace

SOURCE = "block list found by running the model on a synthetic example, then checked on it"
_LAST_TOKEN = (("ForSequenceClassification", LastTokenClassifier),)

# The levels each found model has been checked at: a new level is checked before its split is used.
_CHECKED: weakref.WeakKeyDictionary[nn.Module, set[int]] = weakref.WeakKeyDictionary()


def split(model: nn.Module, at: int | float, blocks: str | list[str] | None = None) -> Split:
    """``split.split``, and for a transformers model outside the table (no ``blocks=``) the split found and checked.

    What is found is kept by model (``arch.FOUND``), so every level of it is cut the same way (a stacked fill's
    blocks j..k too); a level not checked before is checked on the made-up example first.

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
    checked = _CHECKED.setdefault(model, set())
    if s.at not in checked:
        error, report = _check(model, s, synthetic(model))
        if error is not None:
            raise ValueError(
                f"{type(model).__name__}: the split found for it (blocks={found.blocks!r}) is not exact at level "
                f"{s.at}: {report}. Recycle it at a level checked before ({sorted(checked)}), or name its block "
                f"list with blocks='<dotted.path>', or add an entry to layer_recycling.arch.TABLE")
    checked.add(s.at)
    return s


def wanted(model: nn.Module) -> bool:
    """A transformers model whose family the table neither names nor refuses."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return (model_type is not None and hasattr(model, "base_model") and model_type not in arch_table.TABLE
            and model_type not in arch_table.REFUSED)


def discover(model: nn.Module, at: int | float) -> tuple[Arch, Split]:
    """The first candidate split of ``model`` that gives its outputs on a synthetic example, at ``at`` and at the
    middle level (a fix that only shows above block 0, as a position bias block 0 computes, shows there)."""
    arch_table.refuse_unsupported(model)
    batch = synthetic(model)
    t = trace(model, batch)
    tried = t.passed_over()
    for path in t.candidates():
        try:
            found = list(variants(model, path, t))
        except ValueError as err:
            tried.append(f"{path!r}: {err}")
            continue
        for label, arch in found:
            s, why = _proven(model, at, arch, batch)
            if s is not None:
                return arch, s
            tried.append(f"{path!r} ({label}): {why}")
    raise ValueError(_refusal(model, tried))


def _proven(model: nn.Module, at: int | float, arch: Arch, batch: dict) -> tuple[Split | None, str]:
    """(the split at ``at``, "") when it and the split at the middle level give the model's outputs, else (None,
    why not)."""
    try:
        s = split_with(model, at, arch)
        splits = [s] + ([split_with(model, s.num_layers // 2, arch)] if s.at != s.num_layers // 2 else [])
    except Exception as err:  # noqa: BLE001 - a candidate that cannot be cut is a finding
        return None, f"cutting it fails: {type(err).__name__}: {err}"
    for one in splits:
        error, report = _check(model, one, batch)
        if error is not None:
            return None, f"at level {one.at}, {report}"
    _CHECKED.setdefault(model, set()).update(one.at for one in splits)
    return s, ""


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


def variants(model: nn.Module, path: str, t: Trace) -> Iterator[tuple[str, Arch]]:
    """(label, split of ``model`` at the block list ``path``): as a ``blocks=`` override cuts it (with every module
    inside the base's children that ran after the blocks in the top only: OPT's decoder norm, EfficientNet's
    top convolution), then with the fixes that apply to this model, all together and
    (when several apply) each alone."""
    base = model.base_model
    before, after = t.around(base, path)
    plain = arch_table.overridden(base, path)
    inner = tuple(q for q in after if "." in q)  # the base's own later children read its output: norms only
    plain = dataclasses.replace(plain, tail=tuple(dict.fromkeys(plain.tail + inner)), source=SOURCE)
    yield "as found", plain
    fixes = _fixes(model, plain, before)
    outer = tuple(q for q in after if "." not in q and q not in plain.tail)
    if outer:  # the base's own later children that transform its output (MobileViT's conv_1x1_exp)
        fixes[f"the bottom stops before {', '.join(outer)}"] = {"tail": plain.tail + outer}
    if fixes:
        yield " + ".join(fixes), dataclasses.replace(plain, **{k: v for fix in fixes.values() for k, v in fix.items()})
    if len(fixes) > 1:
        for label, fix in fixes.items():
            yield label, dataclasses.replace(plain, **fix)


def _fixes(model: nn.Module, plain: Arch, before: list[str]) -> dict[str, dict]:
    """{label: Arch fields} of the family fixes that may apply: each is kept only if the check then passes."""
    base, fixes = model.base_model, {}
    if type(model).__name__.endswith("ForSequenceClassification") and hasattr(model, "score"):
        fixes["the classifier pools the last real token"] = {"heads": _LAST_TOKEN}
    stem = [q for q in before if q not in plain.seam]
    maps = tuple(q for q in stem if _maps_states(base.get_submodule(q)))
    if maps:  # projections to the blocks' width (RoFormer), norms of the embeddings (BLOOM, CLIP's pre-norm)
        fixes[f"the top skips {', '.join(maps)}"] = {"blank": maps}
    positions = tuple(q for q in stem if _is_positions(base, base.get_submodule(q)))
    if positions and plain.entry == "inputs_embeds":  # learned positions added in forward (GPT-2, OPT)
        fixes[f"the top adds no positions {', '.join(positions)}"] = {"zero": positions}
    scales = tuple(n for n, v in vars(base).items() if "multiplier" in n and "embed" in n and isinstance(v, float))
    if scales and plain.entry == "inputs_embeds":  # factors forward applies to inputs_embeds (Granite)
        fixes[f"the top leaves out {', '.join(scales)}"] = {"unscale": scales}
    return fixes


def _maps_states(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or "norm" in type(m).__name__.lower()


def _is_positions(base: nn.Module, m: nn.Module) -> bool:
    """An embedding table other than the token embeddings (nor a copy sharing their weight)."""
    words = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    return isinstance(m, nn.Embedding) and not (words is not None and m.weight is getattr(words, "weight", None))
