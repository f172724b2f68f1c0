"""sentence-transformers: a ``SentenceTransformer`` whose transformers run recycled, used as before.

``recycle_sentence_transformer(st, at=0.5)`` returns a copy of ``st`` whose ``Transformer`` modules call a
recycled model (``lr.recycle``) instead of the plain one: ``encode``, ``SentenceTransformerTrainer`` and its
losses, evaluators and ``save``/``save_pretrained`` work unchanged. Each text is keyed by its own tokens, so a
text seen in many pairs or triplets runs the bottom once. The copy has weights of its own (``st`` is left as it
was; ``share_weights=True`` shares them instead); it saves the whole plain transformer, so the folder loads as an
ordinary ``SentenceTransformer``.

``at="pooled"`` stores one vector per text (the ``Pooling`` module's output: the transformer and its pooling run
once per distinct text) and trains what comes after it from the store: a head (``head=``, default a
``pooled.SkipConnectionHead``, the identity until trained) then the model's own modules after ``Pooling`` (``Dense``,
``Normalize``). ``encode`` gives the head's output; ``save`` writes the plain model with the head as a ``Dense``
module, so ``SentenceTransformer(path)`` loads it with no code of this library.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..dual import TOWERS, RecycledDual
from ..model import Recycled, recycle
from ..pipeline import input_names_of
from ..pooled import LEVEL, Pooled, SkipConnectionHead
from ..saving import check_bottoms_unchanged, untied_parameters
from ..stores import Store

__all__ = ["recycle_sentence_transformer", "recycled_models"]

_DEFAULT_STORE: Any = object()
_RECYCLED = (Recycled, RecycledDual)  # what lr.recycle returns: a dual model (CLIP) recycles each tower
# What a recycled model takes from the features ST passes on (ST's own bookkeeping keys stay out).
_OPTIONS = ("return_dict", "output_hidden_states", "output_attentions")


def recycle_sentence_transformer(model: nn.Module, at: int | float | None = None,
                                 store: Store | Mapping[str, Store] | None = _DEFAULT_STORE, *,
                                 share_weights: bool = False, head: nn.Module | None = None, **options: Any
                                 ) -> nn.Module:
    """A copy of the ``SentenceTransformer`` ``model`` whose transformer(s) serve their bottom ``at`` blocks from
    ``store``: hits are read, misses run the bottom once and are stored (also while training).

    Args:
        model: a ``SentenceTransformer`` (or any module holding sentence-transformers ``Transformer`` modules:
            a ``Router`` with a query and a document transformer recycles both). It is not changed: the copy has
            weights of its own, so training it leaves ``model``'s weights and trainable flags as they were.
        at: blocks to recycle (int) or a fraction, as for ``lr.recycle``; or ``"pooled"``: one vector per text
            stored (the ``Pooling`` output), and ``head`` then the modules after ``Pooling`` trained on it.
        store: a store for the one transformer (default a new ``MemoryStore``; ``None`` keeps nothing), or
            ``{name: store}`` with the names ``recycled_models`` gives, one per transformer.
        share_weights: True shares every weight with ``model`` instead of copying them (half the memory): then
            training the copy trains ``model`` too, and ``model``'s recycled blocks stop requiring gradients.
        head: with ``at="pooled"``: (b, d) -> (b, d'), trained (default ``SkipConnectionHead(d)``, the identity
            until trained). ``save`` writes it as an ST ``Dense``: a ``SkipConnectionHead`` or ``nn.Linear`` (folded),
            ``nn.Identity`` (left out), or any sentence-transformers module (as it is).
        options: ``lr.recycle``'s keyword arguments (``config=``, ``key=``, ``autocast=``, ...).
    Returns:
        The recycled copy; ``copy.stats`` is its recycled model's live ``Stats`` (with several transformers, a
        dict of them by name), ``recycled_models(copy)`` its ``Recycled`` models (``.stats``, ``.store``).
    Raises:
        TypeError: ``model`` holds no sentence-transformers ``Transformer`` module.
        ValueError: one store given for several transformers, or a store mapping whose names do not match.
    """
    _transformers(model)  # refuse a model without one before copying it
    if at == LEVEL:
        return _recycled_pooled(model, store, share_weights, head, options)
    if head is not None:
        raise TypeError(f"head= is for at='pooled' (a head trained on stored pooled vectors); got at={at!r}")
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
    found = {name: t.model for name, t in _transformers(model).items() if isinstance(t.model, _RECYCLED)}
    found.update({name: t._modules["pooled"] for name, t in _transformers(model).items() if "pooled" in t._modules})
    return found


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
    new = _own_inputs(_shallow(transformer))
    new._modules["model"] = rec
    new.unpad_inputs = False  # a recycled model keys padded rows; ST must not pack a batch into one sequence
    new.model_forward_params = {*rec.input_names, *_OPTIONS}  # ST's other feature keys never reach the model
    rec.register_load_state_dict_pre_hook(_renamer(rec))
    return new


def _own_inputs(transformer: nn.Module) -> nn.Module:
    """``transformer`` (a shallow copy) with a tokenizer of its own: max_seq_length on it truncates its inputs only."""
    for name in ("processor", "tokenizer", "processing_kwargs"):
        if name in transformer.__dict__:
            transformer.__dict__[name] = copy.deepcopy(transformer.__dict__[name])
    return transformer


# ---- at="pooled": one vector per text stored, the head and the modules after Pooling trained on it -----------------


class _Pooling(nn.Module):
    """An ST ``Transformer`` and ``Pooling`` run as one: model inputs -> the sentence embedding (b, d)."""

    def __init__(self, transformer: nn.Module, pooling: nn.Module):
        super().__init__()
        self.transformer, self.pooling = transformer, pooling

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.pooling(self.transformer(dict(inputs)))["sentence_embedding"]


class _After(nn.Module):
    """The head, then the ST modules after ``Pooling`` (``Dense``, ``Normalize``), on sentence embeddings (b, d)."""

    def __init__(self, head: nn.Module, after: list[nn.Module]):
        super().__init__()
        self.head, self.after = head, nn.ModuleList(after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = {"sentence_embedding": x if _is_st_module(self.head) else self.head(x)}
        for module in ([self.head] if _is_st_module(self.head) else []) + list(self.after):
            features = module(features)
        return features["sentence_embedding"]


def _is_st_module(module: nn.Module) -> bool:
    from sentence_transformers.base.modules.module import Module

    return isinstance(module, Module)


def _recycled_pooled(model: nn.Module, store: Any, share_weights: bool, head: nn.Module | None,
                     options: dict[str, Any]) -> nn.Module:
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    kinds = [type(m).__name__ for m in model.children()]
    names = list(model._modules)
    if len(names) < 2 or not isinstance(model[0], Transformer) or not isinstance(model[1], Pooling):
        raise TypeError(f"at='pooled' recycles a SentenceTransformer that starts with a Transformer and a Pooling "
                        f"module; this one holds {kinds}. Recycle it at a block level (at=0.5) instead")
    source = model if share_weights else copy.deepcopy(model)
    transformer, pooling = source[0], source[1]
    after = [source._modules[n] for n in names[2:]]
    head = head if head is not None else SkipConnectionHead(pooling.get_embedding_dimension())
    plain = Pooled(_Pooling(transformer, pooling), _After(head, after), input_names_of(transformer.model, False),
                   config=getattr(transformer.model, "config", None),
                   pooling="sentence-transformers Pooling " + json.dumps(pooling.get_config_dict(), sort_keys=True))
    stores = {} if store is _DEFAULT_STORE else {"store": store}
    rec = recycle(plain, LEVEL, **stores, tokenizer=transformer.tokenizer, **options)
    served = _own_inputs(_shallow(transformer))  # an ST Transformer still: it tokenizes and saves as one
    served._modules["pooled"] = rec
    served.forward = functools.partial(_serve_pooled, rec)
    passed = _shallow(pooling)
    passed.forward = _pass
    out = _shallow(source)
    out._modules.clear()
    out._modules.update({names[0]: served, names[1]: passed})
    out.stats = rec.stats
    out.save = functools.partial(_save_plain, out, [transformer, pooling, _st_head(head), *after])
    return out


def _serve_pooled(rec: Recycled, features: dict[str, Any], **_: Any) -> dict[str, Any]:
    """The Transformer module's forward at the pooled level: the head's output, hits from the store."""
    features["sentence_embedding"] = rec(**{n: features[n] for n in rec.input_names if n in features})
    return features


def _pass(features: dict[str, Any], **_: Any) -> dict[str, Any]:
    return features  # the Pooling module at the pooled level: the embedding is served already


def _st_head(head: nn.Module) -> nn.Module | None:
    """The head as a sentence-transformers module a plain ``SentenceTransformer`` loads (None: no module)."""
    if _is_st_module(head) or isinstance(head, nn.Identity):
        return None if isinstance(head, nn.Identity) else head
    linear = head.as_linear() if isinstance(head, SkipConnectionHead) else head if isinstance(head, nn.Linear) else None
    if linear is None:
        raise TypeError(f"head {type(head).__name__}: save writes the head as a sentence-transformers module, which a "
                        f"plain SentenceTransformer loads; pass a SkipConnectionHead, an nn.Linear or a "
                        f"sentence-transformers module (e.g. models.Dense) as head=")
    return linear  # folded into a Dense when saved (its weights are read then)


def _save_plain(out: nn.Module, modules: list[nn.Module | None], path: str, *args: Any, **kwargs: Any) -> None:
    """Save ``out`` as the plain model: Transformer, Pooling, the head (a ``Dense``), the modules after Pooling."""
    from sentence_transformers.sentence_transformer.modules import Dense

    transformer, pooling, head, *after = modules
    if isinstance(head, nn.Linear):  # read at save time: the trained weights
        rec = out[0]._modules["pooled"]
        live = rec.top.model.head.head
        linear = live.as_linear() if isinstance(live, SkipConnectionHead) else live
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        head = Dense(linear.in_features, linear.out_features, bias=bias is not None, activation_function=nn.Identity(),
                     init_weight=linear.weight.detach().clone(), init_bias=bias)
    plain = _shallow(out)
    plain.__dict__.pop("save", None)
    plain._modules.clear()
    plain._modules.update({str(i): m for i, m in enumerate(m for m in (transformer, pooling, head, *after)
                                                            if m is not None)})
    type(out).save(plain, path, *args, **kwargs)


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
