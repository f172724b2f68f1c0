"""The bottom's side of a recycled model, owned in one place: the frozen bottom, the keys, the store, the counters.

A ``Pipeline`` keys examples (``Keyer``), checks every key before the store is trusted with it (a user's ``key=``
given to two inputs; an entry stored from other inputs), runs the bottom, and reads and writes the store. Its
verbs are what the stages call:

- ``encode(example)``: (key, unpadded inputs, labels) of one example;
- ``missing(keyed)``: the entries a fill must compute;
- ``compute(pending)`` (or ``computed(pending)``, batches of states without storing them): run and store;
- ``lookup(keys, rows)``: serving, hits read and misses computed (and stored).

``fill`` (chunks, process groups, commits), ``loader`` (datasets over the store), ``serve`` (the caller's batch
layout), ``stack`` and ``integrations.ray_data`` are built on those verbs; ``model.Recycled`` (an ``nn.Module``)
holds a pipeline beside the top. Nothing here imports the stages or the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from . import batches, data
from .keys import digest
from .stores import NullStore, SharedStore
from .stores.codecs import CODECS, check_error

if TYPE_CHECKING:
    from .arch import Arch
    from .config import RecycleConfig
    from .fingerprint import Fingerprint
    from .split import Split
    from .stores import Store

Locate = Callable[[str], str]  # key -> the example in words, for errors ("example 7")
StatesOf = Callable[[list[str], list[dict]], list[torch.Tensor]]  # (keys, unpadded inputs) -> their states

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


@dataclasses.dataclass(frozen=True)
class Keyer:
    """How examples are keyed: by a digest of the model inputs that reach the bottom (``content_key``), or by the
    user's ``key_fn(example)``. Picklable (with a picklable ``key_fn``): Ray tasks and DataLoader workers key
    examples as the pipeline does, without its model."""

    input_names: tuple[str, ...]  # the model inputs that reach the bottom, in signature order
    key_fn: Callable[[Any], Any] | None = None  # the user's key=, or None: keys are digests of the model inputs

    def encode(self, example: Any, what: str = "an example"
               ) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(key, unpadded model inputs, labels) of one raw example (``what`` names it in errors).

        Raises:
            ValueError, TypeError: inputs the model cannot take (float ids, a mask of another length, ...).
        """
        inputs, labels = data.parts(data.normalize(example, self.input_names), self.input_names)
        key = digest(self.key_fn(example)) if self.key_fn is not None else content_key(inputs)
        return key, inputs, labels


def content_key(inputs: dict[str, torch.Tensor]) -> str:
    """A digest of an example's unpadded model inputs: its key by default, and, beside an entry stored under a
    user's key, the check that the key was not given to other inputs."""
    return digest(data.key_fields(inputs))


@dataclasses.dataclass(eq=False)
class Pipeline:
    """The frozen bottom of ``source`` (the ``split``'s), the store of its states, and how examples are keyed."""

    source: nn.Module  # the user's model: a stacked fill takes the blocks between two levels from it
    split: Split  # the halves, where the cut is, and the architecture's rules
    options: RecycleConfig  # the recycling options (autocast, store_misses, allow_nonfinite, blocks)
    store: Store
    keyer: Keyer
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

    @property
    def bottom(self) -> nn.Module:
        return self.split.bottom

    @property
    def at(self) -> int:
        return self.split.at

    @property
    def arch(self) -> Arch:
        return self.split.arch

    @property
    def key_fn(self) -> Callable[[Any], Any] | None:
        return self.keyer.key_fn

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.keyer.input_names

    @property
    def keeps(self) -> bool:
        """False for ``store=None`` (a ``NullStore``): nothing is filled, and the bottom runs on every batch."""
        return not isinstance(self.store, NullStore)

    @property
    def shared(self) -> bool:
        """Whether every process that opens the store sees it (a ``SharedStore``): only then do the ranks of a
        process group fill it together."""
        return isinstance(self.store, SharedStore)

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
        if not self.keeps:
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
        """(key, unpadded model inputs, labels) of one raw example (``Keyer.encode``); its token ids are checked
        against the vocabulary by ``check_rows``, a batch of examples at a time."""
        return self.keyer.encode(example, what)

    def encode_many(self, examples: Iterable[Any], first: int = 0
                    ) -> Iterator[tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
        """``encode`` of each example as it is read (a generator is read once, never held); errors name "example
        i", counted from ``first``."""
        for i, example in enumerate(examples, first):
            yield self.keyer.encode(example, f"example {i}")

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
        with autocast(self.options.autocast, device):
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
        batch = batches.collate_inputs(rows, self.pad_id, ragged=self.arch.masked)
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

    # ---- keys: every check before the store is trusted with a key, here -----------------------------------

    def collisions(self, keyed: Sequence[tuple[str, dict]]) -> Iterator[tuple[str, int, int]]:
        """(key, first, i) for each pair (key, inputs) of ``keyed`` whose user key an earlier pair with other inputs
        holds (``first``: that pair): one stored state would serve both. None with content keys."""
        if self.key_fn is None:
            return
        seen: dict[str, tuple[int, str]] = {}  # key -> (first pair, digest of its inputs)
        for i, (key, inputs) in enumerate(keyed):
            check = content_key(inputs)
            first, was = seen.setdefault(key, (i, check))
            if was != check:
                yield key, first, i

    def stale(self, keys: Sequence[str], rows: Sequence[dict]) -> list[str]:
        """The keys among ``keys`` (all stored) whose entry was computed from other inputs than ``rows``: a user's
        key given to other inputs by an earlier run (content keys cannot be)."""
        if self.key_fn is None or not keys:
            return []
        was = self.store.checks_many(list(keys))
        return [k for k, w, r in zip(keys, was, rows) if w is not None and w != content_key(r)]

    def _held(self, keyed: Sequence[tuple[str, dict]], what: str, first: int = 0
              ) -> tuple[dict[str, dict], list[str]]:
        """({key: inputs} of ``keyed``, first copy of each; the keys the store holds), after the key checks.

        Raises:
            ValueError: a user's key given to two different inputs, within ``keyed`` (``what`` names its pairs,
                counted from ``first``) or against an entry stored earlier from other inputs.
        """
        for key, j, i in self.collisions(keyed):
            raise ValueError(
                f"key= gave {what} {first + j} and {first + i} the same key {key[:12]}... but their model inputs differ: one "
                f"stored state would serve both. Make the key function unique per input (e.g. include every field "
                f"that changes the inputs), or drop key= to key by content"
            )
        rows: dict[str, dict] = {}
        for key, inputs in keyed:
            rows.setdefault(key, inputs)
        keys = list(rows)
        held = [k for k, h in zip(keys, self.store.contains_many(keys) if keys else []) if h]
        stale = self.stale(held, [rows[k] for k in held])
        if stale:
            raise ValueError(
                f"key= gives {len(stale)} example(s) (first key {stale[0][:12]}...) the key of an entry the store "
                f"holds, stored earlier from different model inputs: the store would serve that entry's state for "
                f"them. Make the key function unique per input (e.g. include every field that changes the inputs), "
                f"or use a new store"
            )
        return rows, held

    # ---- the store: what a fill computes, serving, storing ---------------------------------------------------

    def missing(self, keyed: Sequence[tuple[str, dict]], first: int = 0) -> dict[str, dict]:
        """The (key -> inputs) of ``keyed`` ((key, unpadded inputs) pairs) that the store lacks, each key once;
        ``first``: the place of ``keyed[0]`` among the caller's examples, for errors.

        Raises:
            ValueError: a user's key given to two different inputs (see ``_held``).
        """
        rows, held = self._held(keyed, "examples", first)
        for key in held:
            del rows[key]
        return rows

    def lookup(self, keys: Sequence[str], rows: Sequence[dict[str, torch.Tensor]], device: torch.device,
               dtype: torch.dtype, first: int | None = None) -> list[torch.Tensor]:
        """The states of ``rows`` (unpadded inputs, keyed ``keys``) as ``dtype`` on ``device``: hits from the store,
        misses from the bottom (stored when ``store_misses``). ``first``: the index of ``rows[0]`` among the
        caller's examples (None: rows of one batch), for errors."""
        self.check_bottom()  # hits were computed by the bottom of the fingerprint: it must still be this one
        misses, hits = self._held(list(zip(keys, rows)), "rows" if first is None else "examples", first or 0)
        found = dict(zip(hits, self.store.get_many(hits, device=device, dtype=dtype)))
        for key in hits:
            del misses[key]
        if misses:
            states = self.bottom_states(list(misses.values()), device)
            found.update(zip(misses, (s.to(dtype) for s in states)))
            if self.options.store_misses and self.keeps:  # durable at the next commit
                self.put(list(misses), states, list(misses.values()), _locator(keys, first))
        self.stats.misses += sum(k in misses for k in keys)
        self.stats.hits += sum(k not in misses for k in keys)
        return [found[k] for k in keys]

    def computed(self, pending: dict[str, dict], batch_size: int, states_of: StatesOf | None = None
                 ) -> Iterator[tuple[list[str], list[dict], list[torch.Tensor]]]:
        """(keys, rows, states) of ``pending`` (key -> unpadded inputs), a batch at a time, longest first (less
        padding to compute). Nothing is checked or stored: ``put`` (or ``check_states``) does that.

        ``states_of(keys, rows)`` replaces the bottom (a stacked fill reads a lower store and runs the middle).
        """
        keys = list(pending)
        if self.arch.masked:
            keys.sort(key=lambda k: data.length(pending[k]), reverse=True)
        device = self.device
        states_of = states_of or (lambda _, rows: self.bottom_states(rows, device))
        for start in range(0, len(keys), batch_size):
            chunk = keys[start : start + batch_size]
            rows = [pending[k] for k in chunk]
            yield chunk, rows, states_of(chunk, rows)

    def compute(self, pending: dict[str, dict], batch_size: int, states_of: StatesOf | None = None,
                locate: Locate | None = None, room: Callable[[list[torch.Tensor]], None] | None = None) -> int:
        """Run the bottom on ``pending`` (key -> unpadded inputs) and store the states (``computed``, then
        ``put``); returns how many were stored. The first batch also measures the store's codec against its
        stated bound, and ``room(states)`` sees it before it is stored (a fill's check that the disk has room)."""
        for i, (keys, rows, states) in enumerate(self.computed(pending, batch_size, states_of)):
            if room is not None and i == 0:
                room(states)
            self.put(keys, states, rows, locate, measure=i == 0)
        return len(pending)

    def put(self, keys: list[str], states: list[torch.Tensor], rows: list[dict], locate: Locate | None = None,
            measure: bool = False) -> None:
        """Store ``states`` under ``keys``; entries keyed by a user's ``key=`` keep ``content_key`` of their
        inputs, so a key later given to other inputs is caught.

        Raises:
            ValueError: a state holds NaN or inf (unless ``allow_nonfinite``), or (``measure``) the store's codec
                exceeds its stated error bound on these states; nothing of the batch is stored.
        """
        self.check_states(keys, states, locate, measure)
        self.store.put_many(keys, states, checks=self.checks_of(rows))
        self.stats.stored += len(keys)

    def check_states(self, keys: list[str], states: list[torch.Tensor], locate: Locate | None = None,
                     measure: bool = False) -> None:
        """``put``'s refusals, for states stored elsewhere (a Ray sink): NaN or inf, unless ``allow_nonfinite``;
        with ``measure``, the store's codec against its stated error bound on these states."""
        locate = locate or (lambda _: "an example")
        if not self.options.allow_nonfinite:
            refuse_nonfinite(keys, states, locate)
        codec = CODECS.get(self.store.codec)
        if measure and codec is not None and states and len({tuple(s.shape[1:]) for s in states}) == 1:
            check_error(states, codec, lambda i: f"{locate(keys[i])} (key {keys[i][:12]}...)")

    def checks_of(self, rows: Sequence[dict]) -> list[str] | None:
        """What the store keeps beside entries of ``rows``: their ``content_key`` under a user's key, else None."""
        return [content_key(r) for r in rows] if self.key_fn is not None else None


def _locator(keys: Sequence[str], first: int | None) -> Locate:
    """``locate(key)`` for errors: "row i of the batch", or "example first + i" of a ``predict`` call."""
    at = {k: i for i, k in reversed(list(enumerate(keys)))}  # a key's first row
    return (lambda k: f"row {at[k]} of the batch") if first is None else (lambda k: f"example {first + at[k]}")


def refuse_nonfinite(keys: Sequence[str], states: Sequence[torch.Tensor], locate: Locate) -> None:
    """Refuse states holding NaN or inf, naming the first such example (one device sync for the batch)."""
    if not states:
        return
    if bool(torch.isfinite(torch.cat([s.reshape(-1) for s in states])).all()):  # one op for the batch
        return
    finite = torch.stack([torch.isfinite(s).all() for s in states]).cpu()  # which one, to name it
    i = int((~finite).nonzero()[0, 0])
    s = states[i]
    raise ValueError(
        f"{locate(keys[i])} (key {keys[i][:12]}...) has a state with {int(torch.isnan(s).sum())} NaN and "
        f"{int(torch.isinf(s).sum())} inf among its {s.numel()} values: the bottom overflowed (float16 weights or "
        f"autocast?) or its inputs or weights hold NaN. Nothing of this batch was stored. Fix the example or the "
        f"model, or store them as they are with recycle(..., allow_nonfinite=True) (a float codec; int8 cannot)"
    )


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
