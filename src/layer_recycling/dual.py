"""The dual text-image models (CLIPModel, SiglipModel): each tower recycled on its own store, the rest trains.

``lr.recycle(dual_model, at)`` returns a ``RecycledDual``: the text tower and the image tower are each a
``Recycled`` (split, fingerprinted and keyed by content on their own, each with its own store), and the model's
own ``forward``, ``get_text_features`` and ``get_image_features`` run on a shallow copy of the model whose towers
are those two. So the contrastive loss, the projections and ``logit_scale`` (and SigLIP's ``logit_bias``) are the
model's own code, trained with the towers' tops; the bottoms run once per distinct text and per distinct image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Iterable

from torch import nn

from .arch import DUALS
from .checks import check_example
from .pipeline import Stats
from .stores import MemoryStore, NullStore, Store
from .surgery import replace

if TYPE_CHECKING:
    from .config import RecycleConfig

Recycled = nn.Module  # a tower's ``model.Recycled``, which this module never imports (``model`` imports it)

TOWERS = ("text", "image")  # the names a dual's stores, levels, keys and stats go by


def towers_of(model: nn.Module) -> dict[str, str] | None:
    """{"text": path, "image": path} of a dual model's towers (``arch.DUALS``), None for any other model."""
    return DUALS.get(getattr(getattr(model, "config", None), "model_type", None))


class Tower(nn.Module):
    """Stands in for one tower in the dual model's copy: the model's calls go to the recycled tower."""

    def __init__(self, recycled: Recycled):
        super().__init__()
        self.recycled = recycled

    def forward(self, *args: Any, interpolate_pos_encoding: bool | None = None, **kwargs: Any):
        if interpolate_pos_encoding:  # the dual's forwards pass False by default; True changes the image's states
            raise ValueError(
                "interpolate_pos_encoding=True: the image tower's stored states were computed at the model's image "
                "size; recycle a model whose config has the image size you serve, and pass images of that size")
        return self.recycled(*args, **kwargs)


class RecycledDual(nn.Module):
    """A dual model whose towers serve their bottoms from two stores: ``rec(input_ids=..., pixel_values=...,
    return_loss=True)``, ``rec.get_text_features(...)`` and ``rec.get_image_features(...)`` as the model's own.

    ``rec.towers``: {"text": Recycled, "image": Recycled}; ``rec.store`` and ``rec.stats`` by the same names.
    The top (the towers' tops, projections, ``logit_scale``) follows the wrapper's train/eval mode; the bottoms
    always run in eval mode.
    """

    def __init__(self, model: nn.Module, towers: dict[str, Recycled], recycle_config: RecycleConfig):
        super().__init__()
        object.__setattr__(self, "source", model)  # not a submodule: the copy shares its parameters
        paths = towers_of(model)
        self.recycle_config = recycle_config
        self.config = model.config
        self.model = replace(model, {paths[name]: Tower(rec) for name, rec in towers.items()})
        self.parts = {paths[name]: rec for name, rec in towers.items()}  # by path in the model, for ``saving``
        self.train(self.training)

    @property
    def towers(self) -> dict[str, Recycled]:
        paths = towers_of(self.source)
        return {name: self.parts[paths[name]] for name in TOWERS}

    @property
    def store(self) -> dict[str, Store]:
        return {name: rec.store for name, rec in self.towers.items()}

    @property
    def stats(self) -> dict[str, Stats]:
        return {name: rec.stats for name, rec in self.towers.items()}

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(n for rec in self.towers.values() for n in rec.input_names)

    def forward(self, input_ids: Any = None, pixel_values: Any = None, attention_mask: Any = None,
                position_ids: Any = None, return_loss: bool | None = None, **kwargs: Any):
        """The model's forward (``return_loss=True`` for its contrastive loss), each tower served by its store.
        The inputs are named, as the model names them, so that trainers keep those columns."""
        return self.model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                          position_ids=position_ids, return_loss=return_loss, **kwargs)

    def get_text_features(self, input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None,
                          **kwargs: Any):
        """The model's ``get_text_features``, from the text store (misses run the text bottom and are stored)."""
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask,
                                            position_ids=position_ids, **kwargs)

    def get_image_features(self, pixel_values: Any = None, interpolate_pos_encoding: bool = False, **kwargs: Any):
        """The model's ``get_image_features``, from the image store."""
        return self.model.get_image_features(pixel_values=pixel_values,
                                             interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)

    def fill(self, examples: Iterable[Any], batch_size: int = 32, progress: bool = True) -> dict[str, int]:
        """Fill each tower's store from the fields of ``examples`` it takes (dicts of model inputs: a text's
        ``input_ids``, an image's ``pixel_values``, or both); returns the entries added, by tower."""
        examples = list(examples)
        added = {}
        for name, rec in self.towers.items():
            parts = [part for part in (_fields(e, rec.input_names) for e in examples) if part]
            added[name] = rec.fill(parts, batch_size=batch_size, progress=progress)
        return added

    def save_pretrained(self, directory: Any, **kwargs: Any):
        """Write the whole model as ``from_pretrained`` loads it, with ``recycling_config.json`` recording each
        tower's split, codec and fingerprint."""
        from . import saving

        return saving.save_pretrained(self, directory, **kwargs)


def _fields(example: Any, names: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(example, Mapping):
        raise TypeError(f"a dual model's examples are dicts of model inputs ({list(names)}, ...); got "
                        f"{type(example).__name__}")
    return {n: example[n] for n in names if n in example}


def recycle_dual(model: nn.Module, make: Callable[..., Recycled], config: RecycleConfig, store: Any, default: bool,
                 key: Any = None, tokenizer: Any = None, example: Any = None) -> RecycledDual:
    """``lr.recycle`` of a dual model: ``make(tower, config, store, key=, tokenizer=)`` recycles each tower.

    ``config.at`` applies to each tower, or is ``{"text": at, "image": at}``; ``store`` is ``{"text": store,
    "image": store}`` (``default``: a new ``MemoryStore`` each; ``None``: a ``NullStore`` each); ``key`` is None
    or ``{"text": fn, "image": fn}``; ``tokenizer`` goes to the text tower's fingerprint.

    Raises:
        ValueError: one store for both towers, or a mapping whose names are not "text" and "image".
    """
    paths = towers_of(model)
    levels = _per_tower(config.at, "at", (int, float))
    keys = dict.fromkeys(TOWERS) if key is None else _per_tower(key, "key", ())  # a text's key fits no image
    stores = _stores(store, default)
    towers = {}
    for name in TOWERS:
        tower_config = dataclasses.replace(config, at=levels[name])
        towers[name] = make(getattr(model, paths[name]), tower_config, stores[name], key=keys[name],
                            tokenizer=tokenizer if name == "text" else None)
    if example is not None and config.check_split:
        for name, rec in towers.items():
            check_example(rec, _fields(example, rec.input_names))
    return RecycledDual(model, towers, config)


def _per_tower(value: Any, what: str, single: tuple[type, ...]) -> dict[str, Any]:
    """``value`` for each tower: one value for both, or {"text": ..., "image": ...}."""
    if not isinstance(value, Mapping):
        if isinstance(value, single) and not isinstance(value, bool):
            return dict.fromkeys(TOWERS, value)
        both = f"one {what} for both towers or " if single else ""
        raise TypeError(f"{what}={value!r}: a dual model takes {both}one for each tower, "
                        f"{{'text': ..., 'image': ...}}")
    if set(value) != set(TOWERS):
        raise ValueError(f"{what}= names {sorted(value)}; a dual model's towers are {list(TOWERS)}: give one each")
    return dict(value)


def _stores(store: Any, default: bool) -> dict[str, Store]:
    if default:
        return {name: MemoryStore() for name in TOWERS}
    if store is None:
        return {name: NullStore() for name in TOWERS}
    if not isinstance(store, Mapping):
        raise ValueError(
            f"one store ({type(store).__name__}) given for a dual model's two towers; each bottom needs a store of its "
            f"own (a store holds one bottom's states). Pass store={{'text': store, 'image': store}}")
    return _per_tower(store, "store", ())
