"""``recycle``: the user's model cut at block k; its frozen bottom fills a store, its top trains and serves from it.

The module's own forward is pure: stored states in, the model's outputs out. Keys, store reads and writes live
in ``fill``, ``loader`` and ``serve``; the methods here only delegate to them.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from . import data, fill, loader, saving, serve
from .checks import SplitCheck, check_example, source_of
from .config import RecycleConfig
from .integrations import peft
from .fingerprint import fingerprint_of
from .keys import digest
from .split import resolve_ties, split
from .stores import MemoryStore, NullStore, Store, check_store

_NOT_INPUTS = {
    "inputs_embeds", "use_cache", "output_attentions", "output_hidden_states", "return_dict", "cache",
    "past_key_values", "cache_position", "head_mask", "encoder_hidden_states", "encoder_attention_mask",
    "logits_to_keep", "interpolate_pos_encoding", "kwargs", "args", *data.LABEL_NAMES,
}
_DEFAULT_STORE: Any = object()


@dataclasses.dataclass
class Stats:
    """Counters of one recycled model (per process)."""

    hits: int = 0  # examples served from the store at inference
    misses: int = 0  # examples the bottom ran on at inference
    stored: int = 0  # entries this model wrote to the store
    bottom_calls: int = 0  # batches the bottom ran on (fill and inference)
    bottom_examples: int = 0  # examples the bottom ran on (fill and inference)


class Recycled(nn.Module):
    """A model split at block ``at``: the frozen ``bottom`` fills a store, the ``top`` runs on stored states.

    ``rec(**model_inputs)`` serves: hits come from the store and the bottom runs only on the misses.
    ``rec(states=..., attention_mask=..., labels=...)`` (batches from ``loader``) runs the top alone.
    The top's train/eval mode follows the wrapper's (train mode from construction, as any new module); the
    bottom always runs in eval mode.
    """

    def __init__(self, model: nn.Module, config: RecycleConfig, store: Store,
                 key: Callable[[Any], Any] | None = None, tokenizer: Any = None):
        super().__init__()
        self.config, self.store, self.key_fn = config, check_store(store), key
        model, adapters = peft.unwrap(model)  # a PEFT model: split the model it wraps, adapters in place
        object.__setattr__(self, "source", model)  # not a submodule: its parameters are the halves' already
        s = resolve_ties(split(model, config.at, config.blocks), config.untie, model)
        self.untied = s.untied  # head parameters the top holds its own trainable copies of
        self.bottom, self.top, self.at, self.num_layers, self.arch = s.bottom, s.top, s.at, s.num_layers, s.arch
        peft.warn_frozen(adapters, self.bottom)
        self.bottom.requires_grad_(False)
        self.split_check = None  # a split no test proved exact checks its first batch (or example= at once)
        if config.check_split and not s.arch.tested:
            self.split_check = SplitCheck(model, s, source_of(s.arch, config.blocks is not None)).attach(self.bottom)
        self.input_names = input_names_of(model, generic=s.arch.generic)
        self.pad_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
        self.stats = Stats()
        self.fingerprint = fingerprint_of(
            self.bottom, model=model, at=s.at, num_layers=s.num_layers, blocks=s.arch.blocks,
            codec=self.store.codec, tokenizer=tokenizer, preprocess=config.preprocess, autocast=config.autocast,
        )
        self.store.bind_fingerprint(self.fingerprint)
        self.accepts_loss_kwargs = getattr(s.top.model, "accepts_loss_kwargs", s.top.takes_kwargs)  # as Trainer reads it
        self.train(self.training)  # the top leaves from_pretrained's eval mode with the wrapper

    @property
    def level(self) -> float:
        """The recycled fraction of blocks."""
        return self.at / self.num_layers if self.num_layers else 0.0

    def train(self, mode: bool = True) -> Recycled:
        super().train(mode)
        self.bottom.eval()  # recycled blocks never train: their cached outputs stand for every epoch
        return self

    def encode(self, example: Any) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(key, unpadded model inputs, labels) of one raw example."""
        ex = data.normalize(example, self.input_names)
        inputs, labels = data.parts(ex, self.input_names)
        key = digest(self.key_fn(example)) if self.key_fn is not None else serve.row_key(inputs)
        return key, inputs, labels

    # ---- the model ----------------------------------------------------------------------------------------

    def forward(self, *args: torch.Tensor, states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                start_positions: torch.Tensor | None = None, end_positions: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, output_attentions: bool | None = None,
                return_dict: bool | None = None, num_items_in_batch: Any = None, **inputs: torch.Tensor):
        """``rec(states=(b, n, h), attention_mask=(b, n), **labels)`` runs the top on stored states.

        ``rec(**model_inputs)`` (no ``states``) serves through the store (``serve.serve``). Returns what the
        model returns, with a loss when labels are given. The keywords are named so that trainers (HF
        ``Trainer``'s ``remove_unused_columns``) keep these columns. ``output_hidden_states`` gives the top's
        hidden states: the first is the stored state at block k (the recycled blocks' own states are not
        stored); ``num_items_in_batch`` reaches the model's loss as it would without recycling.
        """
        given = {"labels": labels, "start_positions": start_positions, "end_positions": end_positions,
                 "output_hidden_states": output_hidden_states, "output_attentions": output_attentions,
                 "return_dict": return_dict}
        extra = {k: v for k, v in given.items() if v is not None}
        if num_items_in_batch is not None and self.accepts_loss_kwargs:
            extra["num_items_in_batch"] = num_items_in_batch
        if states is None:
            named = dict(zip(self.input_names, args))
            return serve.serve(self, {**named, "attention_mask": attention_mask, **inputs}, extra)
        if inputs:
            raise TypeError(f"with states=, expected attention_mask, labels and output options; got {sorted(inputs)}")
        return self._top(states, attention_mask, extra)

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

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The whole model's state dict, in its own names (what ``from_pretrained`` checkpoints hold)."""
        return saving.state_dict(self)

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load a whole model's state dict (``state_dict()``'s form) into the model and the top."""
        return saving.load_state_dict(self, state_dict, strict)

    # ---- the stages ---------------------------------------------------------------------------------------

    def fill(self, examples: Iterable[Any], batch_size: int = 32, progress: bool = True,
             start_from: Recycled | None = None, group: Any = None) -> int:
        """Run the bottom once per distinct example not yet stored; returns how many entries were added.

        Duplicates within ``examples`` and keys already in the store are skipped: a second fill is free.
        ``start_from``: the same model recycled at a lower level (a lossless store): only the blocks between
        the two levels run, on its stored states; its store is filled first where it lacks an example.
        In a process group (``torch.distributed`` initialised, or ``group=``) with a store all ranks share
        (a ``DiskStore``), every rank passes the same examples and computes a disjoint share of the missing
        keys, balanced by token count; then all ranks see every entry.
        """
        return fill.fill(self, examples, batch_size, progress, start_from, group)

    def loader(self, examples: Iterable[Any], batch_size: int = 32, shuffle: bool = False, fill_batch_size: int = 32,
               progress: bool = True, group_by_length: bool = False, seed: int | None = None,
               **dataloader_kwargs) -> torch.utils.data.DataLoader:
        """A DataLoader of training batches ``{"states", "attention_mask", labels...}`` read from the store.

        Missing entries are filled first, once; after that no batch runs the bottom (with ``store=None`` the
        batches hold model inputs instead, and the bottom runs on each). Pass a batch to the model:
        ``rec(**batch).loss``. ``group_by_length`` batches examples of similar length together (shuffled when
        ``shuffle``), so less padding is computed. Other keyword arguments go to ``torch.utils.data.DataLoader``.
        """
        return loader.make_loader(self, examples, batch_size, shuffle, fill_batch_size, progress, group_by_length,
                                  seed, **dataloader_kwargs)

    def dataset(self, examples: Iterable[Any], fill_batch_size: int = 32, progress: bool = True):
        """The training dataset over ``examples`` (filled first, once): items ``{"states", labels...}``, a
        ``collate`` for batches, and ``lengths``. For trainers that build their own loaders (HF ``Trainer``)."""
        return loader.make_loader(self, examples, fill_batch_size=fill_batch_size, progress=progress).dataset

    def predict(self, examples: Iterable[Any], batch_size: int = 32, progress: bool = True) -> list[dict]:
        """Outputs for raw examples in order (one dict of tensors each), keyed as ``fill`` keys them."""
        return serve.predict(self, examples, batch_size, progress)

    def verify(self, examples: Iterable[Any], sample: int = 32, rtol: float | None = None, atol: float = 1e-4,
               seed: int = 0) -> fill.VerifyReport:
        """Re-compute a random sample of stored entries and compare them with the store.

        Inputs that change between epochs (random augmentation) are frozen into the cache when ``key=`` keys
        the raw object; this check finds it. Warns and reports the mismatched keys.
        """
        return fill.verify(self, examples, sample, rtol, atol, seed)


def recycle(
    model: nn.Module,
    at: int | float | None = None,
    store: Store | None = _DEFAULT_STORE,
    *,
    config: RecycleConfig | None = None,
    key: Callable[[Any], Any] | None = None,
    tokenizer: Any = None,
    example: Any = None,
    **options: Any,
) -> Recycled:
    """Recycle the bottom ``at`` blocks of ``model`` (int count or fraction; 0.5 of 6 blocks is 3).

    Args:
        model: a transformers model (base or task head) or any ``nn.Module`` with a block list. It is not
            changed, except that the recycled blocks' parameters stop requiring gradients.
        at: overrides ``config.at`` (default 0.5).
        store: where states live; default a new ``MemoryStore()``. ``None`` keeps nothing (a ``NullStore``:
            the bottom runs every call, the frozen-without-cache baseline).
        config: a ``RecycleConfig``; ``options`` (its field names: ``blocks``, ``store_misses``,
            ``preprocess``, ``check_split``, ``untie``) override its fields.
        key: ``example -> object`` to key examples yourself (e.g. an image file's bytes); default: a digest
            of the model inputs that reach the bottom.
        tokenizer: folded into the fingerprint, with ``preprocess`` (the tokenizer's call arguments).
        example: one example (as ``fill`` takes it) or a list of them: the split checks itself on it now, so a
            wrong split is refused before any fill (``rec.split_check.report`` says what was compared).
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
    store = MemoryStore() if store is _DEFAULT_STORE else NullStore() if store is None else store
    rec = Recycled(model, config, store, key=key, tokenizer=tokenizer)
    if example is not None and config.check_split:
        check_example(rec, example)
    return rec


def input_names_of(model: nn.Module, generic: bool) -> tuple[str, ...]:
    """The model's forward inputs that reach the bottom, in signature order."""
    target = model if generic else model.base_model
    params = [p for p in inspect.signature(target.forward).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if generic:
        return tuple(p.name for p in params[:1])
    return tuple(p.name for p in params if p.name not in _NOT_INPUTS)
