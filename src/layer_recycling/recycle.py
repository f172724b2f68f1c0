"""``recycle``: a model whose frozen bottom runs once per distinct input; its top trains and serves from a store.

The bottom always runs in eval mode under ``no_grad``: dropout inside recycled blocks is off, as it must be
for a cached state to stand for every later epoch.
"""

from __future__ import annotations

import dataclasses
import inspect
import random
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from . import data
from .fingerprint import fingerprint
from .keys import digest
from .split import split
from .stores import MemoryStore, Store, check_store

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


@dataclasses.dataclass
class VerifyReport:
    """Result of re-computing a sample of stored entries (see ``Recycled.verify``)."""

    checked: int
    mismatched: list[str]
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return not self.mismatched


class Recycled(nn.Module):
    """A model split at block ``at``: the frozen ``bottom`` fills a store, the ``top`` runs on stored states.

    Call it on ordinary (padded) model inputs to serve: cached examples come from the store and the bottom
    runs only on the misses. Call it with ``states=`` (batches from ``loader``) to train the top.
    """

    def __init__(
        self,
        model: nn.Module,
        at: int | float,
        store: Store | None,
        key: Callable[[dict], Any] | None = None,
        tokenizer: Any = None,
        preprocess: dict | None = None,
        blocks: str | None = None,
        store_misses: bool = True,
    ):
        super().__init__()
        store = check_store(store) if store is not None else None
        s = split(model, at, blocks)
        self.bottom, self.top, self.at, self.num_layers, self.arch = s.bottom, s.top, s.at, s.num_layers, s.arch
        self.bottom.requires_grad_(False)
        self.bottom.eval()
        self.store, self.key_fn, self.store_misses = store, key, store_misses
        self.input_names = _input_names(model, generic=s.arch.generic)
        self.pad_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
        self.stats = Stats()
        fp = fingerprint(
            self.bottom, model=model, at=s.at, num_layers=s.num_layers, blocks=s.arch.blocks,
            dtype=store.codec if store is not None else "native", tokenizer=tokenizer, preprocess=preprocess,
        )
        self.fingerprint_parts, self.fingerprint = fp.parts, fp.value
        if store is not None:
            store.bind_fingerprint(fp)

    @property
    def level(self) -> float:
        """The recycled fraction of blocks."""
        return self.at / self.num_layers if self.num_layers else 0.0

    def train(self, mode: bool = True) -> Recycled:
        super().train(mode)
        self.bottom.eval()  # recycled blocks never train: their cached outputs stand for every epoch
        return self

    # ---- keys -------------------------------------------------------------------------------------------

    def _example(self, example: Any) -> tuple[str, dict, dict]:
        """(key, model inputs, labels) of one raw example."""
        ex = data.normalize(example, self.input_names)
        inputs, labels = data.parts(ex, self.input_names)
        return self._key(ex, inputs), inputs, labels

    def _key(self, example: dict, inputs: dict[str, torch.Tensor]) -> str:
        if self.key_fn is not None:
            return digest(self.key_fn(example))
        return digest(data.key_fields(inputs))

    # ---- the bottom -------------------------------------------------------------------------------------

    @torch.no_grad()
    def _run_bottom(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.bottom.eval()
        self.stats.bottom_calls += 1
        self.stats.bottom_examples += next(iter(batch.values())).shape[0]
        if self.arch.generic:
            return self.bottom(*batch.values())
        return self.bottom(**batch)

    def _states(self, out: torch.Tensor, lengths: list[int] | None) -> list[torch.Tensor]:
        """Per-example states of a bottom output (b, t, h): each row cut to its own length."""
        return [out[i, : lengths[i]] for i in range(out.shape[0])] if lengths is not None else list(out)

    def _compute(self, pending: dict[str, dict], batch_size: int, progress: bool, device=None) -> None:
        """Run the bottom on ``pending`` (key -> unpadded inputs) in length-sorted batches and store the states."""
        keys = list(pending)
        if self.arch.masked:  # similar lengths together: less padding to compute
            keys.sort(key=lambda k: data.length(pending[k]), reverse=True)
        device = device or _device_of(self.bottom)
        with tqdm(total=len(keys), unit="ex", desc="fill", disable=not progress or not keys) as bar:
            for start in range(0, len(keys), batch_size):
                chunk = keys[start : start + batch_size]
                rows = [pending[k] for k in chunk]
                batch = data.collate_inputs(rows, self.pad_id, ragged=self.arch.masked)
                batch = {n: v.to(device) for n, v in batch.items()}
                out = self._run_bottom(batch)
                lengths = [data.length(r) for r in rows] if self.arch.masked else None
                self.store.put_many(chunk, self._states(out, lengths))
                self.stats.stored += len(chunk)
                bar.update(len(chunk))

    # ---- fill and train ---------------------------------------------------------------------------------

    def fill(self, examples: Iterable[Any], batch_size: int = 32, progress: bool = True) -> int:
        """Run the bottom once per distinct example not yet stored; returns how many entries were added.

        Duplicates within ``examples`` and keys already in the store are skipped: a second fill is free.
        """
        self._need_store("fill")
        pending: dict[str, dict] = {}
        for example in examples:
            key, inputs, _ = self._example(example)
            if key not in pending and key not in self.store:
                pending[key] = inputs
        self._compute(pending, batch_size, progress)
        return len(pending)

    def loader(
        self, examples: Iterable[Any], batch_size: int = 32, shuffle: bool = False, fill_batch_size: int = 32,
        progress: bool = True, group_by_length: bool = False, seed: int | None = None, **dataloader_kwargs,
    ) -> torch.utils.data.DataLoader:
        """A DataLoader of batches read from the store: ``{"states", "attention_mask", labels...}``.

        Missing entries are filled first, once; after that no batch runs the bottom. Pass the batches to
        the model: ``out = rec(**batch)``. ``group_by_length`` batches examples of similar length together
        (in a shuffled order when ``shuffle``), so less padding is computed. Extra keyword arguments go to
        ``torch.utils.data.DataLoader`` (``num_workers``, ``pin_memory``, ``multiprocessing_context``, ...).
        """
        self._need_store("loader")
        self._check_frozen()
        items, pending = [], {}
        for example in examples:
            key, inputs, labels = self._example(example)
            items.append((key, labels, data.length(inputs) if self.arch.masked else None))
            if key not in pending and key not in self.store:
                pending[key] = inputs
        self._compute(pending, fill_batch_size, progress)
        dataset = CachedDataset(self.store, items, dtype=_dtype_of(self.top))
        if group_by_length and self.arch.masked:
            sampler = data.LengthGroupedBatches([n for _, _, n in items], batch_size, shuffle, seed)
            return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate,
                                               **dataloader_kwargs)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                           collate_fn=dataset.collate, **dataloader_kwargs)

    # ---- forward ----------------------------------------------------------------------------------------

    def forward(self, *args: torch.Tensor, states: torch.Tensor | None = None, **inputs: torch.Tensor):
        """``rec(**model_inputs)`` serves through the store; ``rec(states=..., attention_mask=...)`` runs the top.

        Returns what the model returns (with a loss when labels are given).
        """
        if args:
            inputs.update(zip(self.input_names, args))
        if states is not None:
            return self._top(states, inputs.pop("attention_mask", None), inputs)
        inputs = {n: v for n, v in inputs.items() if v is not None}
        labels = {n: inputs.pop(n) for n in data.LABEL_NAMES if n in inputs}
        unknown = sorted(set(inputs) - set(self.input_names))
        if unknown:
            raise TypeError(f"unexpected model inputs {unknown}; this model takes {list(self.input_names)} and labels")
        if self.store is None:  # no caching: the frozen-without-cache baseline
            return self._top(self._run_bottom(inputs), inputs.get("attention_mask"), labels)
        lengths = data.lengths_of(inputs) if self.arch.masked else None
        found = self._lookup(inputs, lengths)
        if lengths is None:
            return self._top(torch.stack(found), None, labels)
        t = inputs["input_ids"].shape[1]  # keep the caller's padded length: outputs keep their shapes
        return self._top(data.pad(found, to=t), data.mask_for(lengths, t, found[0].device), labels)

    def _lookup(self, batch: dict[str, torch.Tensor], lengths: list[int] | None) -> list[torch.Tensor]:
        """States of each row of a padded batch: from the store, or from the bottom for the misses."""
        rows = data.unbatch(batch, lengths)
        keys = [self._key(r, r) for r in rows]
        device, dtype = next(iter(batch.values())).device, _dtype_of(self.top)
        found: dict[str, torch.Tensor] = {}
        hits = [k for k in dict.fromkeys(keys) if k in self.store]
        found.update(zip(hits, self.store.get_many(hits, device=device, dtype=dtype)))
        miss_rows = {k: i for i, k in enumerate(keys) if k not in found}
        if miss_rows:
            index = torch.tensor(list(miss_rows.values()), device=device)
            out = self._run_bottom({n: v.index_select(0, index) for n, v in batch.items()})
            states = self._states(out, [lengths[i] for i in miss_rows.values()] if lengths is not None else None)
            found.update(zip(miss_rows, (s.to(dtype) for s in states)))
            if self.store_misses:
                self.store.put_many(list(miss_rows), states)
                self.stats.stored += len(miss_rows)
        self.stats.misses += sum(k in miss_rows for k in keys)
        self.stats.hits += sum(k not in miss_rows for k in keys)
        return [found[k] for k in keys]

    def _top(self, states: torch.Tensor, mask: torch.Tensor | None, labels: dict[str, torch.Tensor]):
        self._check_frozen()
        unknown = sorted(set(labels) - set(data.LABEL_NAMES) - {"attention_mask"})
        if unknown:
            raise TypeError(f"with states=, expected attention_mask and labels {list(data.LABEL_NAMES)}; got {unknown}")
        refused = sorted(set(labels) - self.top.accepts)
        if refused:
            takes = sorted(set(data.LABEL_NAMES) & self.top.accepts) or "none: it computes no loss"
            raise TypeError(
                f"{type(self.top.model).__name__} takes no {refused} (its labels: {takes}). Drop those fields "
                f"from the examples, or call rec(states=batch['states']) and compute the loss yourself"
            )
        kwargs = {"attention_mask": mask} if self.arch.masked and mask is not None else {}
        return self.top(states, **kwargs, **labels)

    # ---- checks -----------------------------------------------------------------------------------------

    def _need_store(self, verb: str) -> None:
        if self.store is None:
            raise ValueError(
                f"{verb}() needs a store, but this model was made with store=None (no caching: the bottom runs "
                f"on every call). Pass store=lr.MemoryStore() to recycle()."
            )

    def _check_frozen(self) -> None:
        trainable = [n for n, p in self.bottom.named_parameters() if p.requires_grad]
        if trainable:
            raise RuntimeError(
                f"the recycled bottom has trainable parameters ({', '.join(trainable[:3])}"
                f"{', ...' if len(trainable) > 3 else ''}): training them would make every stored state stale. "
                f"Freeze them (rec.bottom.requires_grad_(False)) or recycle fewer blocks (lower `at`)."
            )

    def verify(self, examples: Iterable[Any], sample: int = 32, rtol: float | None = None, atol: float = 1e-4,
               seed: int = 0) -> VerifyReport:
        """Re-compute a random sample of stored entries and compare them with the store.

        Inputs that change between epochs (random augmentation) are frozen into the cache when ``key=`` keys
        the raw object; this check finds it. Warns and reports the mismatched keys.
        """
        self._need_store("verify")
        stored = {}
        for example in examples:
            key, inputs, _ = self._example(example)
            if key in self.store:
                stored.setdefault(key, inputs)
        keys = random.Random(seed).sample(sorted(stored), min(sample, len(stored)))
        rtol = rtol if rtol is not None else (1e-3 if self.store.codec == "native" else 2e-2)
        mismatched, worst = [], 0.0
        for key in keys:
            batch = data.collate_inputs([stored[key]], self.pad_id, ragged=self.arch.masked)
            now = self._states(self._run_bottom(batch), [data.length(stored[key])] if self.arch.masked else None)[0]
            was = self.store.get_many([key], device=now.device, dtype=now.dtype)[0]
            worst = max(worst, float((now - was).abs().max()) if now.shape == was.shape else float("inf"))
            if now.shape != was.shape or not torch.allclose(now, was, rtol=rtol, atol=atol):
                mismatched.append(key)
        report = VerifyReport(checked=len(keys), mismatched=mismatched, max_abs_diff=worst)
        if mismatched:
            warnings.warn(
                f"{len(mismatched)} of {len(keys)} re-computed entries differ from the store (max abs diff "
                f"{worst:.3g}): the inputs changed since they were stored (random augmentation?), so the cache "
                f"serves stale states. Key the augmented inputs (the default key) or drop the augmentation.",
                stacklevel=2,
            )
        return report


class CachedDataset(torch.utils.data.Dataset):
    """Map-style dataset over stored states: item i is ``{"states": (n_i, h), labels...}``."""

    def __init__(self, store: Store, items: list[tuple[str, dict, int | None]], dtype: torch.dtype):
        self.store, self.items, self.dtype = store, items, dtype

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        # One batched read per batch: DataLoader calls this when the dataset defines it.
        keys = [self.items[i][0] for i in indices]
        states = self.store.get_many(keys, dtype=self.dtype)
        return [{"states": s, **self.items[i][1]} for s, i in zip(states, indices)]

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        states = [r.pop("states") for r in rows]
        lengths = [s.shape[0] for s in states] if self.items[0][2] is not None else None
        if lengths is None:
            return {"states": torch.stack(states), **data.collate_labels(rows, None, None)}
        t = max(lengths)
        batch = {"states": data.pad(states), "attention_mask": data.mask_for(lengths, t)}
        return {**batch, **data.collate_labels(rows, lengths, t)}


def recycle(
    model: nn.Module,
    at: int | float = 0.5,
    store: Store | None = _DEFAULT_STORE,
    *,
    key: Callable[[dict], Any] | None = None,
    tokenizer: Any = None,
    preprocess: dict | None = None,
    blocks: str | None = None,
    store_misses: bool = True,
) -> Recycled:
    """Recycle the bottom ``at`` blocks of ``model`` (int count or fraction; 0.5 of 6 blocks is 3).

    Args:
        model: a transformers model (base or task head) or any ``nn.Module`` with a block list. It is not
            changed, except that the recycled blocks' parameters stop requiring gradients.
        store: where states live; default a new ``MemoryStore()``. ``None`` caches nothing (the bottom runs
            every call: the frozen-without-cache baseline).
        key: ``example -> object`` to key examples yourself (e.g. an image file's bytes); default: a digest
            of the model inputs that reach the bottom.
        tokenizer: folded into the fingerprint, with ``preprocess`` (the tokenizer's call arguments).
        blocks: dotted path of the block list, overriding the architecture table.
        store_misses: at inference, store the states of misses.
    Raises:
        FingerprintMismatch: ``store`` was filled by a different bottom.
    """
    store = MemoryStore() if store is _DEFAULT_STORE else store
    return Recycled(model, at, store, key=key, tokenizer=tokenizer, preprocess=preprocess, blocks=blocks,
                    store_misses=store_misses)


def _input_names(model: nn.Module, generic: bool) -> tuple[str, ...]:
    """The model's forward inputs that reach the bottom, in signature order."""
    target = model if generic else model.base_model
    params = [p for p in inspect.signature(target.forward).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if generic:
        return tuple(p.name for p in params[:1])
    return tuple(p.name for p in params if p.name not in _NOT_INPUTS)


def _device_of(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _dtype_of(module: nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
