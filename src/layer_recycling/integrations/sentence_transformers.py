"""sentence-transformers: a ``SentenceTransformer`` whose transformers run recycled, used as before.

``recycle_sentence_transformer(st, at=0.5)`` returns a copy of ``st`` whose ``Transformer`` modules call a
recycled model (``lr.recycle``) instead of the plain one: ``encode``, ``SentenceTransformerTrainer`` and its
losses, evaluators and ``save``/``save_pretrained`` work unchanged. Each text is keyed by its own tokens, so a
text seen in many pairs or triplets runs the bottom once. The copy has weights of its own (``st`` is left as it
was; ``share_weights=True`` shares them instead); it saves the whole plain transformer, so the folder loads as an
ordinary ``SentenceTransformer``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..dual import TOWERS, RecycledDual
from ..model import Recycled, recycle
from ..saving import check_bottoms_unchanged, untied_parameters
from ..stores import Store

__all__ = ["recycle_sentence_transformer", "recycled_models"]

_DEFAULT_STORE: Any = object()
_RECYCLED = (Recycled, RecycledDual)  # what lr.recycle returns: a dual model (CLIP) recycles each tower
# What a recycled model takes from the features ST passes on (ST's own bookkeeping keys stay out).
_OPTIONS = ("return_dict", "output_hidden_states", "output_attentions")


def recycle_sentence_transformer(model: nn.Module, at: int | float | None = None,
                                 store: Store | Mapping[str, Store] | None = _DEFAULT_STORE, *,
                                 share_weights: bool = False, **options: Any) -> nn.Module:
    """A copy of the ``SentenceTransformer`` ``model`` whose transformer(s) serve their bottom ``at`` blocks from
    ``store``: hits are read, misses run the bottom once and are stored (also while training).

    Args:
        model: a ``SentenceTransformer`` (or any module holding sentence-transformers ``Transformer`` modules:
            a ``Router`` with a query and a document transformer recycles both). It is not changed: the copy has
            weights of its own, so training it leaves ``model``'s weights and trainable flags as they were.
        at: blocks to recycle (int) or a fraction, as for ``lr.recycle``.
        store: a store for the one transformer (default a new ``MemoryStore``; ``None`` keeps nothing), or
            ``{name: store}`` with the names ``recycled_models`` gives, one per transformer.
        share_weights: True shares every weight with ``model`` instead of copying them (half the memory): then
            training the copy trains ``model`` too, and ``model``'s recycled blocks stop requiring gradients.
        options: ``lr.recycle``'s keyword arguments (``config=``, ``key=``, ``autocast=``, ...).
    Returns:
        The recycled copy; ``copy.stats`` is its recycled model's live ``Stats`` (with several transformers, a
        dict of them by name), ``recycled_models(copy)`` its ``Recycled`` models (``.stats``, ``.store``).
    Raises:
        TypeError: ``model`` holds no sentence-transformers ``Transformer`` module.
        ValueError: one store given for several transformers, or a store mapping whose names do not match.
    """
    _transformers(model)  # refuse a model without one before copying it
    source = model if share_weights else copy.deepcopy(model)
    found = _transformers(source)
    stores = _stores_for(found, store)
    swapped = {id(t): _recycled(t, at, stores[name], options) for name, t in found.items()}
    out = _rebuilt(source, swapped)
    stats = {name: t.model.stats for name, t in _transformers(out).items() if isinstance(t.model, _RECYCLED)}
    out.stats = next(iter(stats.values())) if len(stats) == 1 else stats
    return out


def recycled_models(model: nn.Module) -> dict[str, Recycled | RecycledDual]:
    """{module path: recycled model} of a ``recycle_sentence_transformer`` result ("0" for a plain one)."""
    return {name: t.model for name, t in _transformers(model).items() if isinstance(t.model, _RECYCLED)}


def _transformers(model: nn.Module) -> dict[str, nn.Module]:
    from sentence_transformers.base.modules.transformer import Transformer

    found = {name: m for name, m in model.named_modules() if isinstance(m, Transformer)}
    if not found:
        raise TypeError(
            f"{type(model).__name__} holds no sentence-transformers Transformer module (its modules: "
            f"{[type(m).__name__ for m in model.children()]}); expected a SentenceTransformer built on a transformers "
            f"model, e.g. SentenceTransformer('all-MiniLM-L6-v2'). Static embeddings have no blocks to recycle"
        )
    return found


def _stores_for(found: dict[str, nn.Module], store: Any) -> dict[str, Any]:
    """{transformer name: what ``lr.recycle`` gets as its store}: a dual model's (CLIP) is a mapping of its towers."""
    if isinstance(store, Mapping) and set(store) == set(TOWERS) and len(found) == 1:  # one dual model's two stores
        return {name: store for name in found}
    if isinstance(store, Mapping):
        if set(store) != set(found):
            raise ValueError(
                f"store= names {sorted(store)}, but this model's transformers are {sorted(found)}; pass one store "
                f"per transformer, keyed by those names"
            )
        return dict(store)
    if store is _DEFAULT_STORE:  # lr.recycle's default: a new MemoryStore (for a dual model, one per tower)
        return dict.fromkeys(found, _DEFAULT_STORE)
    if len(found) > 1 and store is not None:
        raise ValueError(
            f"one store given for {len(found)} transformers ({sorted(found)}); each bottom needs a store of its own "
            f"(a store holds one model's states). Pass store={{name: store}} with those names"
        )
    return {name: store for name in found}


def _recycled(transformer: nn.Module, at: Any, store: Store | None, options: dict[str, Any]) -> nn.Module:
    """A copy of an ST ``Transformer`` module that calls ``lr.recycle(transformer.model, ...)``."""
    if isinstance(transformer.model, _RECYCLED):
        raise ValueError("this SentenceTransformer is recycled already; recycle the original model instead")
    stores = {} if store is _DEFAULT_STORE else {"store": store}
    rec = recycle(transformer.model, at, **stores, tokenizer=transformer.tokenizer, **options)
    new = _shallow(transformer)
    new._modules["model"] = rec
    for name in ("processor", "tokenizer", "processing_kwargs"):  # its own: max_seq_length on the copy truncates
        if name in new.__dict__:                                   # the copy's inputs only
            new.__dict__[name] = copy.deepcopy(new.__dict__[name])
    new.unpad_inputs = False  # a recycled model keys padded rows; ST must not pack a batch into one sequence
    new.model_forward_params = {*rec.input_names, *_OPTIONS}  # ST's other feature keys never reach the model
    rec.register_load_state_dict_pre_hook(_renamer(rec))
    return new


def _renamer(rec: Recycled):
    """A ``load_state_dict`` pre-hook that takes the plain model's names too: the trainer restores a checkpoint
    (``resume_from_checkpoint``, ``load_best_model_at_end``) from a plain SentenceTransformer's state dict."""
    first: dict[int, str] = {}
    for name, t in rec.state_dict(keep_vars=True).items():
        first.setdefault(id(t), name)
    plain = {n: first[id(t)] for n, t in rec.source.state_dict(keep_vars=True).items() if id(t) in first}
    plain.update({n: first[id(p)] for n, p in untied_parameters(rec).items() if id(p) in first})

    def rename(module: nn.Module, state: dict, prefix: str, *_: Any) -> None:
        for old, new in plain.items():
            if prefix + old in state and prefix + new not in state:
                state[prefix + new] = state.pop(prefix + old)
        check_bottoms_unchanged(module, state, prefix)  # its own hook ran before the names were ours

    return rename


def _rebuilt(module: nn.Module, swapped: dict[int, nn.Module]) -> nn.Module:
    """``module`` with the modules in ``swapped`` (by id) replaced: shallow copies along the way, shared elsewhere."""
    if id(module) in swapped:
        return swapped[id(module)]
    children = {name: _rebuilt(child, swapped) if child is not None else None for name, child in module._modules.items()}
    if all(children[name] is child for name, child in module._modules.items()):
        return module
    new = _shallow(module)
    new._modules.update(children)
    card = getattr(new, "model_card_data", None)
    if card is not None and hasattr(card, "register_model"):  # the card describes the copy it is saved with
        new.model_card_data = copy.copy(card)
        new.model_card_data.register_model(new)
    return new


def _shallow(module: nn.Module) -> nn.Module:
    """A copy of ``module`` holding the same children, parameters and hooks in dicts of its own: changing the copy
    (a child swapped, a hook added by a trainer) leaves the original as it was."""
    new = copy.copy(module)
    for name, value in vars(module).items():
        if name.startswith("_") and isinstance(value, (dict, set)):  # copy.copy would share these with the original
            new.__dict__[name] = copy.copy(value)
    return new
