"""``recycle``: the user's model cut at block k; its frozen bottom fills a store, its top trains and serves from it.

``recycle()`` assembles (as PEFT's ``get_peft_model`` does): the split (``split.Split``: the halves and where the
cut is), the store bound to the bottom's fingerprint, and the ``pipeline.Pipeline`` that owns the bottom's side (keys,
key checks, the store, the counters). ``Recycled`` receives the pipeline: an ``nn.Module`` holding the two halves as
submodules, reading everything else through the pipeline; its methods pass the pipeline to the stages (``fill``,
``loader``, ``serve``, ``stack``), and ``forward`` dispatches (the top on stored states, or serving). Weights are
saved as any module's are (``state_dict()``, by parent modules, DDP and Lightning alike); ``saving`` writes the whole
model in its own names, as ``from_pretrained`` loads it.
"""

from __future__ import annotations

import dataclasses
import inspect
import operator
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from . import adapters, data, dual, fill, loader, pooled, saving, serve, stack, transfer
from .checks import SplitCheck, check_example, source_of
from .config import RecycleConfig
from .fingerprint import fingerprint_of
from .pipeline import Keyer, Pipeline, Stats, device_of, dtype_of, input_names_of
from .discover import split
from .split import resolve_ties
from .stores import MemoryStore, NullStore, Store, check_store

__all__ = ["Recycled", "Stats", "recycle"]

_DEFAULT_STORE: Any = object()
# Keywords that go to the top as they are, never to the bottom: output options (labels are data.LABEL_NAMES).
_OPTIONS = ("output_hidden_states", "output_attentions", "return_dict")


class _Read:
    """A read-only attribute of a ``Recycled`` that its pipeline holds: ``path`` from the pipeline, dotted."""

    def __init__(self, path: str, doc: str):
        self.get, self.__doc__ = operator.attrgetter(path), doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, rec: Recycled | None, owner: type) -> Any:
        return self if rec is None else self.get(rec.pipeline)

    def __set__(self, rec: Recycled, value: Any) -> None:
        raise AttributeError(f"rec.{self.name} is fixed when the model is recycled: call lr.recycle(model, ...) again "
                             f"with what you want it to be")


class Recycled(nn.Module):
    """A model split at block ``at``: the frozen ``bottom`` fills a store, the ``top`` runs on stored states.

    ``rec(**model_inputs)`` (or positionally, as the model takes them) serves: hits come from the store, the
    bottom runs only on the misses, and their states are stored (``store_misses``): so a call may read and write
    the store. ``rec(states=..., attention_mask=..., labels=...)`` (batches from ``loader``) runs the top alone.
    ``rec.config`` is the model's own config (what Hugging Face tools read); the recycling options are
    ``rec.recycle_config``. The top's train/eval mode follows the wrapper's; the bottom always runs in eval mode.
    Made by ``recycle()``, which assembles the ``pipeline`` it receives; ``split_check``: a split no test proved
    exact checks its first batch (or ``example=`` at once).
    """

    def __init__(self, pipeline: Pipeline, split_check: SplitCheck | None = None):
        super().__init__()
        self.pipeline = pipeline
        self.bottom, self.top = pipeline.split.bottom, pipeline.split.top  # submodules: state_dict, .to(), DDP
        self.config = getattr(pipeline.source, "config", None)  # the model's own (a transformers config), or None
        self.split_check = split_check
        self._signature = inspect.signature(pipeline.source.forward)
        self.register_state_dict_post_hook(saving.drop_aliases)  # each tensor once: the top shares the stem's
        self.register_load_state_dict_pre_hook(saving.restore_aliases)
        self.register_load_state_dict_pre_hook(saving.check_bottom_unchanged)  # stored states stay the bottom's
        top = pipeline.split.top
        self.accepts_loss_kwargs = getattr(top.model, "accepts_loss_kwargs", top.takes_kwargs)  # as Trainer reads it
        self.train(self.training)  # the top leaves from_pretrained's eval mode with the wrapper

    # ---- what the pipeline holds, read through the model (held once, there) ---------------------------------

    source = _Read("source", "the user's model (not a submodule: its parameters are the halves' already)")
    split = _Read("split", "the ``Split``: the halves, where the cut is, and the architecture's rules")
    at = _Read("split.at", "how many blocks are recycled")
    num_layers = _Read("split.num_layers", "how many blocks the model has")
    level = _Read("split.level", "the recycled fraction of blocks")
    arch = _Read("split.arch", "the architecture's rules (``arch.Arch``)")
    untied = _Read("split.untied", "head parameters the top holds its own trainable copies of")
    recycle_config = _Read("options", "the recycling options (``RecycleConfig``)")
    store = _Read("store", "where the bottom's states are kept")
    stats = _Read("stats", "the counters (``Stats``)")
    fingerprint = _Read("fingerprint", "what the store's entries were computed by")
    key_fn = _Read("key_fn", "the user's ``key=``, or None (keys are digests of the model inputs)")
    input_names = _Read("input_names", "the model inputs that reach the bottom, in signature order")

    def train(self, mode: bool = True) -> Recycled:
        super().train(mode)
        self.bottom.eval()  # recycled blocks never train: their cached outputs stand for every epoch
        return self

    def encode(self, example: Any) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(key, unpadded model inputs, labels) of one raw example."""
        return self.pipeline.encode(example)

    # ---- the model ----------------------------------------------------------------------------------------

    def forward(self, *args: Any, states: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                input_features: torch.Tensor | None = None, input_values: torch.Tensor | None = None,
                labels: torch.Tensor | None = None,
                start_positions: torch.Tensor | None = None, end_positions: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, output_attentions: bool | None = None,
                return_dict: bool | None = None, num_items_in_batch: Any = None, **inputs: Any):
        """``rec(states=(b, n, h), attention_mask=(b, n), **labels)`` runs the top on stored states.

        ``rec(**model_inputs)`` or ``rec(*model_inputs)`` (no ``states``; positional arguments mean what they mean
        to the model's own forward) serves through the store (``_serve``): hits are read, misses run the
        bottom and are stored. An argument that cannot reach the bottom or the top is refused, never dropped.
        Returns what the model returns, with a loss when labels are given. The usual model inputs and labels
        are named keywords so that trainers keep those columns (HF ``Trainer``'s ``remove_unused_columns`` drops
        the columns of a ``datasets.Dataset`` that ``forward`` does not name). ``output_hidden_states`` gives
        the top's hidden states: the first is the stored state at block k; ``num_items_in_batch`` reaches the
        model's loss as it would without recycling.
        """
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                 "position_ids": position_ids, "pixel_values": pixel_values, "input_features": input_features,
                 "input_values": input_values,
                 "labels": labels, "start_positions": start_positions, "end_positions": end_positions,
                 "output_hidden_states": output_hidden_states, "output_attentions": output_attentions,
                 "return_dict": return_dict, **inputs}
        given = {k: v for k, v in given.items() if v is not None}
        if args:
            given = self._bind(args, given, states)
        options = {k: given.pop(k) for k in _OPTIONS if k in given}
        if num_items_in_batch is not None and self.accepts_loss_kwargs:
            options["num_items_in_batch"] = num_items_in_batch
        targets = {k: given.pop(k) for k in data.LABEL_NAMES if k in given}
        if states is None:
            return self._serve(given, targets, options)
        mask = given.pop("attention_mask", None)
        if given:
            raise TypeError(f"with states=, expected attention_mask, labels and output options; got {sorted(given)}")
        return self._top(states, mask, {**targets, **options})

    def _serve(self, inputs: dict[str, Any], labels: dict[str, torch.Tensor], options: dict[str, Any]):
        """Serving a batch of model inputs: states from the store (hits) or the bottom (misses, stored), the top on
        them, and its per-token outputs put back in the caller's layout (``serve.prepare``, ``serve.restore``)."""
        prepared = serve.prepare(self.pipeline, dtype_of(self.top), inputs, labels)
        as_tuple = prepared.layout is not None and self._wants_tuple(options)
        if as_tuple:  # named outputs go back into the caller's layout; the tuple is made from them after
            options = {**options, "return_dict": True}
        out = self._top(prepared.states, prepared.attention_mask, {**prepared.labels, **options})
        out = serve.restore(out, prepared.layout)
        return out.to_tuple() if as_tuple else out

    def _bind(self, args: tuple, given: dict[str, Any], states: torch.Tensor | None) -> dict[str, Any]:
        """Positional arguments named as the model's own forward names them, merged with the keywords."""
        name = type(self.source).__name__
        if states is not None:
            raise TypeError(f"rec(states=...) takes no positional arguments; got {len(args)}")
        try:
            bound = self._signature.bind_partial(*args).arguments
        except TypeError as e:
            raise TypeError(f"{name}.forward{self._signature} refuses {len(args)} positional arguments: {e}") from None
        twice = sorted(set(bound) & set(given))
        if twice:
            raise TypeError(f"rec() got multiple values for {twice}: positionally and as keywords")
        params = self._signature.parameters
        starred = [n for n in bound if params[n].kind == params[n].VAR_POSITIONAL]
        if starred:
            raise TypeError(f"{name}.forward takes *{starred[0]}; a recycled model cannot route them to its "
                            f"bottom or top. Pass the model inputs by name ({list(self.input_names)})")
        return {**{k: v for k, v in bound.items() if v is not None}, **given}

    @property
    def _names_outputs(self) -> bool:
        """A transformers top, which answers with named outputs when asked (``return_dict``)."""
        return self.config is not None and ("return_dict" in self.top.accepts or self.top.takes_kwargs)

    def _wants_tuple(self, extra: dict[str, Any]) -> bool:
        """Whether a transformers model would answer with a tuple (``return_dict=False``, given or configured)."""
        if not self._names_outputs:
            return False
        asked = extra.get("return_dict")
        return asked is False or asked is None and getattr(self.config, "return_dict", True) is False

    def _top(self, states: torch.Tensor, mask: torch.Tensor | None, extra: dict[str, Any]):
        self._check_frozen()
        refused = sorted(set(extra) - self.top.accepts)
        if refused and not self.top.takes_kwargs:
            takes = sorted(set(data.LABEL_NAMES) & self.top.accepts) or "none: it computes no loss"
            raise TypeError(
                f"{type(self.top.model).__name__} takes no {refused} (its labels: {takes}). Drop those fields "
                f"from the examples, or call rec(states=batch['states']) and compute the loss yourself"
            )
        kwargs = {"attention_mask": mask} if self.arch.masked and mask is not None else {}
        return self.top(states, **kwargs, **extra)

    def _check_frozen(self) -> None:
        trainable = [n for n, p in self.bottom.named_parameters() if p.requires_grad]
        if trainable:
            raise RuntimeError(
                f"the recycled bottom has trainable parameters ({', '.join(trainable[:3])}"
                f"{', ...' if len(trainable) > 3 else ''}): training them would make every stored state stale. "
                f"Freeze them (rec.bottom.requires_grad_(False)) or recycle fewer blocks (lower `at`)."
            )

    # ---- saving: the whole model, as from_pretrained and trainers load it ----------------------------------

    def save_pretrained(self, directory: str | os.PathLike, **kwargs: Any) -> Path:
        """Write the whole model (bottom and trained top) as ``from_pretrained`` loads it, with
        ``recycling_config.json`` (level, blocks, codec, fingerprint) to recycle it again on the same store."""
        return saving.save_pretrained(self, directory, **kwargs)

    # ---- the stages ---------------------------------------------------------------------------------------

    def fill(self, examples: Iterable[Any], batch_size: int = 32, progress: bool = True,
             start_from: Recycled | None = None, group: Any = None) -> int:
        """Run the bottom once per distinct example not yet stored; returns how many entries were added.

        Duplicates within ``examples`` and keys already in the store are skipped: a second fill is free.
        ``start_from``: the same model recycled at a lower level (a lossless store): only the blocks between
        the two levels run, on its stored states; its store is filled first where it lacks an example.
        In a process group (``torch.distributed`` initialised, or ``group=``) with a store all ranks share
        (a ``DiskStore``), every rank passes the same examples and computes a disjoint share of the missing
        keys, balanced by token count; then all ranks see every entry. It is collective there: every rank calls
        it (``loader`` and ``dataset`` too), and ranks passing other examples are refused.
        """
        if start_from is not None:
            return stack.fill(self.pipeline, start_from.pipeline, examples, batch_size, progress, group)
        return fill.fill(self.pipeline, examples, batch_size, progress, group)

    def loader(self, examples: Iterable[Any], batch_size: int = 32, shuffle: bool = False, fill_batch_size: int = 32,
               progress: bool = True, group_by_length: bool = False, seed: int | None = None,
               inputs: Sequence[str] | None = None, device: torch.device | str | None = None, **dataloader_kwargs
               ) -> torch.utils.data.DataLoader | transfer.DeviceLoader:
        """A DataLoader of training batches ``{"states", "attention_mask", labels...}`` read from the store.

        Missing entries are filled first, once; after that no batch runs the bottom (with ``store=None`` the
        batches hold model inputs instead, and the bottom runs on each). Pass a batch to the model:
        ``rec(**batch).loss``. ``group_by_length`` batches examples of similar length together (shuffled when
        ``shuffle``), so less padding is computed. ``device``: batches arrive there, read ahead of the step (by
        the workers, or a thread), copied from pinned memory without blocking, states sent at their stored size
        (float16 stays float16 on the bus, int8 its codes and side records) and converted to the top's dtype on
        the device (``transfer.DeviceLoader``). Other keyword arguments go to ``torch.utils.data.DataLoader``.

        ``inputs=["anchor", "positive", ...]``: each example holds several model inputs under those fields (one
        each, or a list of k), labels beside them; batches are ``{field: {"states", "attention_mask"}, labels}``
        (b * k rows for a list field), every input keyed and stored by its own content, once.
        """
        if device is None:
            return loader.make_loader(self.pipeline, examples, dtype=dtype_of(self.top), batch_size=batch_size,
                                      shuffle=shuffle, fill_batch_size=fill_batch_size, progress=progress,
                                      group_by_length=group_by_length, seed=seed, inputs=inputs, **dataloader_kwargs)
        device = torch.device(device)
        dataloader_kwargs.setdefault("pin_memory", device.type == "cuda")
        batches = loader.make_loader(self.pipeline, examples, dtype=None, batch_size=batch_size, shuffle=shuffle,
                                     fill_batch_size=fill_batch_size, progress=progress,
                                     group_by_length=group_by_length, seed=seed, inputs=inputs,
                                     **dataloader_kwargs)  # dtype None: states as stored
        return transfer.DeviceLoader(batches, device, dtype_of(self.top))

    def dataset(self, examples: Iterable[Any], fill_batch_size: int = 32, progress: bool = True,
                inputs: Sequence[str] | None = None):
        """The training dataset over ``examples`` (filled first, once): items ``{"states", labels...}``, a
        ``collate`` for batches, and ``lengths``. For trainers that build their own loaders (HF ``Trainer``).
        ``inputs``: examples of several inputs, as for ``loader``."""
        return self.loader(examples, fill_batch_size=fill_batch_size, progress=progress, inputs=inputs).dataset

    def predict(self, examples: Iterable[Any], batch_size: int = 32, progress: bool = True) -> list[dict]:
        """Outputs for raw examples in order, keyed as ``fill`` keys them: one dict of tensors each (a model's
        named outputs, per-token ones cut to the example's tokens; ``output`` for a bare tensor, ``output[i]``
        for a tuple's items). Runs in eval mode (no dropout) whatever the model's mode, and restores it after."""
        named = {"return_dict": True} if self._names_outputs else {}

        def top(states: torch.Tensor, mask: torch.Tensor | None, extra: dict[str, Any]) -> Any:
            return self._top(states, mask, {**extra, **named})

        training = self.training
        self.eval()
        try:
            return serve.predict(self.pipeline, top, device_of(self.top), dtype_of(self.top), examples, batch_size,
                                 progress)
        finally:
            self.train(training)

    def verify(self, examples: Iterable[Any], sample: int = 32, rtol: float | None = None, atol: float = 1e-4,
               seed: int = 0) -> fill.VerifyReport:
        """Re-compute a random sample of stored entries and compare them with the store.

        Inputs that change between epochs (random augmentation) are frozen into the cache when ``key=`` keys
        the raw object; this check finds it. Warns and reports the mismatched keys.
        """
        return fill.verify(self.pipeline, examples, sample, rtol, atol, seed)


def recycle(
    model: nn.Module,
    at: int | float | None = None,
    store: Store | None = _DEFAULT_STORE,
    *,
    config: RecycleConfig | None = None,
    key: Callable[[Any], Any] | None = None,
    tokenizer: Any = None,
    example: Any = None,
    head: nn.Module | None = None,
    pooling: str | None = None,
    **options: Any,
) -> Recycled | dual.RecycledDual:
    """Recycle the bottom ``at`` blocks of ``model`` (int count or fraction; 0.5 of 6 blocks is 3).

    Args:
        model: a transformers model (base or task head) or any ``nn.Module`` with a block list. It is not
            changed, except that the recycled blocks' parameters stop requiring gradients. A dual text-image
            model (CLIPModel, SiglipModel) gives a ``dual.RecycledDual``: each tower recycled on its own store.
        at: overrides ``config.at`` (default 0.5); for a dual model one level for both towers or
            ``{"text": at, "image": at}``; ``"pooled"``: the pooled level (``head``, ``pooling`` below).
        store: where states live; default a new ``MemoryStore()``. ``None`` keeps nothing (a ``NullStore``:
            the bottom runs every call, the frozen-without-cache baseline). A dual model takes
            ``{"text": store, "image": store}`` (and ``key=`` one per tower, by the same names).
        config: a ``RecycleConfig``; ``options`` (its field names: ``blocks``, ``store_misses``,
            ``preprocess``, ``check_split``, ``untie``, ``allow_nonfinite``) override its fields. The result
            holds it as ``rec.recycle_config`` (``rec.config`` is the model's own config).
        key: ``example -> object`` to key examples yourself (e.g. an image file's bytes); default: a digest
            of the model inputs that reach the bottom.
        tokenizer: folded into the fingerprint, with ``preprocess`` (the tokenizer's call arguments).
        example: one example (as ``fill`` takes it) or a list of them: the split checks itself on it now, so a
            wrong split is refused before any fill (``rec.split_check.report`` says what was compared).
        head, pooling: for ``at="pooled"`` (``pooled.pooled``): the whole encoder and its pooling (``pooling``: "mean",
            "cls", "max" or "lasttoken" for a text model) fill a store of one vector per input, and ``head`` (default
            a ``pooled.SkipConnectionHead``, the identity until trained) is the top.
    Raises:
        FingerprintMismatch: ``store`` was filled by a different bottom.
        ValueError: with ``example``, the split differs from the model on it (see ``checks.SplitCheck``).
        TypeError: an option that ``RecycleConfig`` does not have.
    """
    fields = {f.name for f in dataclasses.fields(RecycleConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"recycle() got unknown options {unknown}; expected some of {sorted(fields)}")
    given = {**options, **({"at": at} if at is not None else {})}
    config = dataclasses.replace(config or RecycleConfig(), **given)
    if config.at == pooled.LEVEL or isinstance(model, pooled.Pooled):  # one vector per input stored, a head on it
        model, config = pooled.pooled(model, head, pooling), dataclasses.replace(config, at=pooled.LEVEL)
    elif head is not None or pooling is not None:
        raise TypeError(f"head= and pooling= are for at='pooled' (a head trained on stored pooled vectors); got "
                        f"at={config.at!r}")
    if dual.towers_of(model) is not None:  # CLIP, SigLIP: each tower recycled on a store of its own
        return dual.recycle_dual(model, assemble, config, store, store is _DEFAULT_STORE, key, tokenizer, example)
    store = MemoryStore() if store is _DEFAULT_STORE else NullStore() if store is None else store
    rec = assemble(model, config, store, key=key, tokenizer=tokenizer)
    if example is not None and config.check_split:
        check_example(rec, example)
    return rec


def assemble(model: nn.Module, config: RecycleConfig, store: Store, key: Callable[[Any], Any] | None = None,
             tokenizer: Any = None) -> Recycled:
    """A ``Recycled`` of ``model`` as ``config`` says: the split (a PEFT model's wrapped model, adapters in place;
    the bottom frozen), the store bound to its fingerprint, and the pipeline that owns the bottom's side.

    Raises:
        FingerprintMismatch: ``store`` was filled by a different bottom.
        TypeError: ``store`` does not implement the store Protocol.
    """
    model, wrapped = adapters.unwrap(model)  # a PEFT model: split the model it wraps, adapters in place
    s = pooled.split(model) if isinstance(model, pooled.Pooled) else split(model, config.at, config.blocks)
    s = resolve_ties(s, config.untie, model)
    adapters.warn_frozen(wrapped, s.bottom)
    s.bottom.requires_grad_(False)
    check = None
    if config.check_split and not s.arch.tested:
        check = SplitCheck(model, s, source_of(s.arch, config.blocks is not None)).attach(s.bottom)
    store = check_store(store)
    fingerprint = fingerprint_of(
        s.bottom, model=model, at=s.at, num_layers=s.num_layers, blocks=s.arch.blocks, codec=store.codec,
        tokenizer=tokenizer, preprocess=config.preprocess, autocast=config.autocast,
        allow_nonfinite=config.allow_nonfinite,
    )
    store.bind_fingerprint(fingerprint)
    pipeline = Pipeline(
        source=model, split=s, options=config, store=store,
        keyer=Keyer(model.input_names if isinstance(model, pooled.Pooled) else input_names_of(
            model, generic=s.arch.generic), key), fingerprint=fingerprint,
        pad_id=getattr(getattr(model, "config", None), "pad_token_id", None) or 0,
    )
    return Recycled(pipeline, check)
