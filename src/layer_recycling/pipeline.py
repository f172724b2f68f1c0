"""The one object the stages take: what runs the bottom, the store, the keys, and the counters.

``fill``, ``serve``, ``loader`` and ``stack`` are functions of a ``Pipeline``; ``model.Recycled`` (an
``nn.Module``) holds one beside the top. Nothing here imports the stages or the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from . import data
from .keys import digest

if TYPE_CHECKING:
    from .arch import Arch
    from .config import RecycleConfig
    from .fingerprint import Fingerprint
    from .stores import Store

# Forward arguments of a transformers base model that are not inputs of an example (options, caches, labels).
_NOT_INPUTS = {
    "inputs_embeds", "use_cache", "output_attentions", "output_hidden_states", "return_dict", "cache",
    "past_key_values", "cache_position", "head_mask", "encoder_hidden_states", "encoder_attention_mask",
    "logits_to_keep", "interpolate_pos_encoding", "mask_time_indices", "kwargs", "args", *data.LABEL_NAMES,
}


@dataclasses.dataclass
class Stats:
    """Counters of one recycled model (per process). Rows are what serving answered (a text twice in a batch is two
    rows); inputs are what the bottom computed (each distinct input once per call)."""

    hits: int = 0  # rows served from entries the store held (rec(**batch), predict)
    misses: int = 0  # rows the store lacked when served: their inputs ran through the bottom (repeats count again)
    stored: int = 0  # entries this model wrote to the store (fill, and misses stored while serving)
    bottom_calls: int = 0  # batches the bottom ran on (fill and serving)
    bottom_examples: int = 0  # distinct inputs the bottom ran on (fill and serving): what recycling did not save


@dataclasses.dataclass(eq=False)
class Pipeline:
    """The frozen bottom of ``source`` cut at block ``at``, the store of its states, and how examples are keyed."""

    source: nn.Module  # the user's model: a stacked fill takes the blocks between two levels from it
    config: RecycleConfig  # the recycling options (autocast, store_misses, blocks)
    at: int
    arch: Arch
    bottom: nn.Module
    store: Store
    key_fn: Callable[[Any], Any] | None  # the user's key=, or None: keys are digests of the model inputs
    input_names: tuple[str, ...]  # the model inputs that reach the bottom, in signature order
    pad_id: int
    fingerprint: Fingerprint
    stats: Stats = dataclasses.field(default_factory=Stats)
    vocab: int | None = None  # token ids the bottom's embedding holds (None: not a token model), from source
    # the bottom's tensors (dtype, where, version) when its weights last matched the fingerprint
    _seen: tuple = dataclasses.field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        self._seen = self._tensors_now()  # the fingerprint was just taken of these
        if self.vocab is None:
            self.vocab = vocab_of(self.source)

    def _tensors_now(self) -> tuple:
        """Each bottom tensor's dtype and storage, and each weight's version (buffers' versions are left out: DDP
        writes the same buffers into every replica at every step, which would digest the weights every step)."""
        return (*((p.dtype, p.device, p.data_ptr(), p._version) for p in self.bottom.parameters()),
                *((b.dtype, b.device, b.data_ptr()) for b in self.bottom.buffers()))

    def check_bottom(self) -> None:
        """Refuse to read or write the store once the bottom's weights are not those of its fingerprint.

        ``rec.to(torch.bfloat16)`` or an in-place edit of a bottom weight after ``recycle`` would otherwise store
        (and serve) states of another bottom under this fingerprint. A cheap look at each tensor's dtype and
        storage and each weight's version, every call; the weights are digested again only when that changed
        (moving the model to another device keeps the digest).

        Raises:
            FingerprintMismatch: the bottom's weights differ from those the store was bound to.
        """
        if not self.store.keeps:
            return
        seen = self._tensors_now()
        if seen == self._seen:
            return
        from .fingerprint import FingerprintMismatch, weights_digest

        if weights_digest(self.bottom) != self.fingerprint.parts["weights"]:
            dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in self.bottom.parameters()
                             if t.is_floating_point()})
            raise FingerprintMismatch(
                f"the frozen bottom's weights changed after lr.recycle (now {', '.join(dtypes)}; a cast such as "
                f"rec.to(torch.bfloat16), or an in-place edit): its store holds states of the bottom it was bound "
                f"to, and would mix in states of this one. Cast or edit the model first, then lr.recycle(model, "
                f"...) with a new store (autocast= computes states in lower precision without casting weights)"
            )
        self._seen = seen

    def encode(self, example: Any, what: str = "an example"
               ) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(key, unpadded model inputs, labels) of one raw example (``what`` names it in errors); its token ids
        are checked against the vocabulary by ``check_rows``, a batch of examples at a time.

        Raises:
            ValueError, TypeError: inputs the model cannot take (float ids, a mask of another length, ...).
        """
        inputs, labels = data.parts(data.normalize(example, self.input_names), self.input_names)
        key = digest(self.key_fn(example)) if self.key_fn is not None else row_key(inputs)
        return key, inputs, labels

    def check_rows(self, rows: list[dict[str, torch.Tensor]], name: Callable[[int], str]) -> None:
        """Refuse unpadded examples holding token ids outside the model's vocabulary, before anything runs: one
        look at all their ids, then the first such example named (``name(i)`` for ``rows[i]``).

        Raises:
            ValueError: naming the example, the id and the vocabulary size (``data.check_ids``).
        """
        ids = [r["input_ids"] for r in rows if "input_ids" in r]
        if self.vocab is None or not ids:
            return
        joined = torch.cat([i.reshape(-1) for i in ids])
        if not joined.numel() or 0 <= int(joined.min()) and int(joined.max()) < self.vocab:
            return
        for i, row in enumerate(rows):
            data.check_ids(row["input_ids"], self.vocab, name(i))

    @torch.no_grad()
    def run_bottom(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The bottom's output for a right-padded batch of model inputs: (b, t, h) for text, (b, ...) otherwise."""
        self.check_bottom()
        if self.vocab is not None and "input_ids" in batch:  # the last guard: callers check each example first
            data.check_ids(batch["input_ids"], self.vocab, "a batch", batch.get("attention_mask"))
        self.bottom.eval()
        self.stats.bottom_calls += 1
        self.stats.bottom_examples += next(iter(batch.values())).shape[0]
        device = next(iter(batch.values())).device
        with autocast(self.config.autocast, device):
            if self.arch.generic:
                return self.bottom(*batch.values())
            try:
                return self.bottom(**batch)
            except (RuntimeError, IndexError) as err:
                self._refuse_too_long(batch, err)
                raise

    def _refuse_too_long(self, batch: dict[str, torch.Tensor], err: Exception) -> None:
        """Say which limit a batch broke when the bottom failed on examples longer than the model's positions."""
        limit = getattr(getattr(self.source, "config", None), "max_position_embeddings", None)
        ids = batch.get("input_ids")
        if isinstance(limit, int) and ids is not None and ids.dim() == 2 and ids.shape[1] > limit:
            raise ValueError(
                f"an example of {ids.shape[1]} tokens is longer than the model's max_position_embeddings ({limit}), "
                f"and its bottom failed on it ({type(err).__name__}). Truncate the examples: "
                f"tokenizer(text, truncation=True, max_length={limit})"
            ) from err

    def bottom_states(self, rows: list[dict[str, torch.Tensor]], device: torch.device) -> list[torch.Tensor]:
        """Per-example states of unpadded ``rows``, each cut to its length: one batch through the bottom for each
        set of inputs the rows have (an example with ``token_type_ids`` beside one without: each runs as given)."""
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(data.fields(row), []).append(i)
        states: list[Any] = [None] * len(rows)
        for members in groups.values():
            for i, state in zip(members, self._states_of([rows[i] for i in members], device)):
                states[i] = state
        return states

    def _states_of(self, rows: list[dict[str, torch.Tensor]], device: torch.device) -> list[torch.Tensor]:
        """``bottom_states`` of rows that have the same inputs: one padded batch."""
        batch = data.collate_inputs(rows, self.pad_id, ragged=self.arch.masked)
        out = self.run_bottom({n: v.to(device) for n, v in batch.items()})
        if not self.arch.masked:
            return list(out)
        return [out[i, : self.stored_length(r)] for i, r in enumerate(rows)]

    @property
    def positions(self) -> Callable[[int], int] | None:
        """Input positions -> states stored for them, where that is not one each (a clip's frames); else None."""
        frames = self.arch.frames
        return None if frames is None else lambda n: frames(self.source, n)

    def stored_length(self, inputs: dict[str, torch.Tensor]) -> int:
        """How many states the store holds for an unpadded example: its tokens, or its clip's frames."""
        n = data.length(inputs)
        return n if self.arch.frames is None else self.arch.frames(self.source, n)

    @property
    def device(self) -> torch.device:
        """Where the bottom runs."""
        return device_of(self.bottom)


def row_key(inputs: dict[str, torch.Tensor]) -> str:
    """The default key of one unpadded example: a digest of the inputs that reach the bottom."""
    return digest(data.key_fields(inputs))


def autocast(wanted: str | None, device: torch.device):
    """The autocast the store's states were made under; running under another one would mix two kinds."""
    ambient = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    ambient = str(ambient).removeprefix("torch.") if ambient is not None else None
    if ambient is not None and ambient != wanted:
        raise ValueError(
            f"the bottom would run under torch.autocast({ambient}), but this model's states are "
            f"{wanted + ' autocast' if wanted else 'full precision'} (its store holds those). Pass "
            f"recycle(..., autocast={ambient!r}) with a store of its own, or run the fill and serving outside autocast"
        )
    if wanted is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, wanted))


def input_names_of(model: nn.Module, generic: bool) -> tuple[str, ...]:
    """The model's forward inputs that reach the bottom, in signature order.

    A generic model's bottom runs its stem and blocks on the first argument alone.
    """
    target = model if generic else model.base_model
    params = [p for p in inspect.signature(target.forward).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if generic:
        return tuple(p.name for p in params[:1])
    return tuple(p.name for p in params if p.name not in _NOT_INPUTS)


def vocab_of(model: nn.Module) -> int | None:
    """How many token ids ``model``'s input embedding holds; None for a model without one."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        embedding = get() if callable(get) else None
    except (NotImplementedError, AttributeError):  # transformers' base class, for a model without token ids
        embedding = None
    size = getattr(embedding, "num_embeddings", None)
    return size if isinstance(size, int) else None


def device_of(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def dtype_of(module: nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
