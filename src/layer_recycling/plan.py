"""``plan``: before any fill, what recycling a dataset at a level costs and saves, and whether its store fits.

The examples are read once, keeping a 20-byte key and a length per example and a seeded sample of them (a
generator is fine). The split runs on the sample: the bottom (what the fill and each frozen epoch pay), the top's
forward and backward from stored states (each recycled epoch), the whole model's (full fine-tuning), and a real fill
of the sample into a scratch store (keying, the bottom, the codec, the write). The store's size per codec follows
from the distinct examples' lengths (``stores.sizes``, the rule a fill checks its disk with); the payoff epochs from
the cost per example of each way to train. Timings are of this machine and this batch size.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from . import batches, data
from .model import Recycled, recycle
from .pipeline import device_of
from .stores import DiskStore, NullStore
from .stores.binkeys import key_bytes, key_strs
from .stores.codecs import NAMES, codec_name
from .stores import sizes
from .stores.sizes import entries_bytes, in_words

__all__ = ["Plan", "plan"]

CODECS = tuple(codec_name(n) for n in NAMES)  # the stored names: bfloat16, float16, float32, int8-outliers


@dataclasses.dataclass
class Plan:
    """What a fill and training at one level will take. Seconds are per example on this machine (``batch_size``
    examples a step); bytes are the store's growth for the examples it lacks; ``payoff_*`` are the training epochs
    after which a fill then recycled epochs cost less than that way of training (``inf``: never)."""

    at: int
    num_layers: int
    examples: int  # read
    distinct: int  # distinct inputs (keys)
    stored: int  # of those, already in the store
    rows: int  # rows (tokens) the new entries hold
    rows_exact: bool  # from every example's length (False: estimated from the sample)
    feature: tuple[int, ...]  # each row's shape
    codec: str  # the store's codec
    bytes: dict[str, int]  # predicted growth per codec
    free: int | None  # bytes free on the store's disk (None: a memory store)
    seconds: dict[str, float]  # per example: fill, bottom, top (fwd+bwd), read, full (fwd+bwd)
    sample: int  # examples timed
    batch_size: int

    @property
    def fits(self) -> bool | None:
        return None if self.free is None else self.bytes[self.codec] <= self.free

    @property
    def fill_seconds(self) -> float:
        return self.seconds["fill"] * (self.distinct - self.stored)

    def epoch_seconds(self) -> dict[str, float]:
        """One training epoch over every example: full fine-tuning, the frozen bottom run each time, recycled."""
        s, n = self.seconds, self.examples
        return {"full": s["full"] * n, "frozen": (s["bottom"] + s["top"]) * n, "recycled": (s["top"] + s["read"]) * n}

    def payoff(self, against: str) -> float:
        """Epochs after which the fill plus recycled epochs cost less than ``against`` ("frozen" or "full")."""
        epoch = self.epoch_seconds()
        saved = epoch[against] - epoch["recycled"]
        return self.fill_seconds / saved if saved > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "fits": self.fits, "fill_seconds": self.fill_seconds,
                "epoch_seconds": self.epoch_seconds(),
                "payoff_epochs": {"frozen": self.payoff("frozen"), "full": self.payoff("full")}}

    def __str__(self) -> str:
        new = self.distinct - self.stored
        lines = [f"recycling {self.at} of {self.num_layers} blocks: {self.examples:,} examples, {self.distinct:,} "
                 f"distinct, {self.stored:,} already stored, {new:,} to fill ({self.rows:,} rows of "
                 f"{list(self.feature)}{'' if self.rows_exact else ', estimated from the sample'})",
                 "store growth: " + ", ".join(f"{c} {in_words(b)}" + (" (this store)" if c == self.codec else "")
                                              for c, b in self.bytes.items())]
        if self.free is not None:
            lines.append(f"disk: {in_words(self.free)} free: {'fits' if self.fits else 'DOES NOT FIT'}")
        epoch = self.epoch_seconds()
        lines.append(f"fill: about {self.fill_seconds:,.1f} s; one epoch: full {epoch['full']:,.1f} s, frozen "
                     f"{epoch['frozen']:,.1f} s, recycled {epoch['recycled']:,.1f} s")
        lines.append(f"pays off after {_epochs(self.payoff('frozen'))} against the frozen bottom, "
                     f"{_epochs(self.payoff('full'))} against full fine-tuning (timed on {self.sample} examples, "
                     f"batches of {self.batch_size})")
        return "\n".join(lines)


def _epochs(e: float) -> str:
    return "never (the top costs as much as what it saves)" if math.isinf(e) else f"{e:.2f} epochs"


def plan(model: nn.Module, examples: Iterable[Any], at: int | float | None = None, *, store: Any = None,
         codec: Any = None, tokenizer: Any = None, key: Any = None, batch_size: int = 32, sample: int = 64,
         seed: int = 0, **options: Any) -> Plan:
    """What recycling ``model`` at ``at`` over ``examples`` will take, before any fill: the store's size for each
    codec, the fill's time, the epochs after which it pays off, and whether the store's disk has room.

    Args:
        model: the model (as ``recycle`` takes it), or a ``Recycled`` (its source, level, key and store).
        examples: as ``fill`` takes them; read once.
        store: a ``DiskStore`` or a directory (new or holding a store, opened read-only); None: a memory store.
        codec: the codec of a new store (default float32); an existing store's is its own.
        sample: examples run to time each part (a seeded sample of the distinct ones).
        options: ``recycle``'s options (``blocks=``, ``autocast=``, ...).
    Nothing is written but a scratch store in a temporary directory; the model's parameters, their gradients and
    trainable flags, and its train/eval mode are as they were.
    """
    if isinstance(model, Recycled):
        at, key = model.at if at is None else at, model.key_fn if key is None else key
        store = model.store if store is None else store
        model = model.source
    target = _open(store)
    with _untouched(model):
        rec = recycle(model, at, store=None, key=key, tokenizer=tokenizer, **options)
        if not isinstance(rec, Recycled):
            raise TypeError(f"plan() takes a model of one bottom; {type(model).__name__} is recycled as "
                            f"{type(rec).__name__} (a store per tower): plan each tower on its own examples, e.g. "
                            f"lr.plan(model.text_model, texts, at)")
        keys, lengths, picked, count = _scan(rec, examples, sample, seed)
        if not picked:
            raise ValueError("plan() got no examples: expected the examples a fill would take")
        new = ~np.concatenate([np.asarray(target.contains_many(key_strs(c)), bool) for c in _chunks(keys)]) \
            if target is not None else np.ones(len(keys), bool)
        states, seconds = _time(rec, model, [p[1] for p in picked], [p[0] for p in picked], batch_size,
                                codec_name(codec) or "float32", key, tokenizer, options)
    rows, exact = _rows(states, [p[1] for p in picked], lengths[new])
    feature = tuple(states[0].shape[1:])
    codec_now = getattr(target, "codec", None) or codec_name(codec) or "float32"
    checks = key is not None
    growth = {c: entries_bytes(rows, int(new.sum()), feature, c, checks) for c in CODECS}
    path = getattr(target, "path", None) if target is not None else _path(store)
    return Plan(at=rec.at, num_layers=rec.num_layers, examples=count, distinct=len(keys), stored=int((~new).sum()),
                rows=rows, rows_exact=exact, feature=feature, codec=codec_now, bytes=growth,
                free=sizes.free_bytes(path) if path is not None else None, seconds=seconds, sample=len(picked),
                batch_size=batch_size)


def _path(store: Any) -> Path | None:
    return Path(store) if isinstance(store, (str, Path)) else None


def _open(store: Any) -> Any:
    """The store a fill would extend, read-only (None: a new or memory store: nothing stored yet)."""
    if isinstance(store, (str, Path)):
        return DiskStore(store, readonly=True) if (Path(store) / "store.json").exists() else None
    return store if store is not None and not isinstance(store, NullStore) else None


def _chunks(keys: np.ndarray, size: int = 1 << 16) -> Iterable[np.ndarray]:
    return (keys[i : i + size] for i in range(0, len(keys), size))


@contextlib.contextmanager
def _untouched(model: nn.Module):
    """The model's trainable flags, gradients and mode restored after the block (recycle freezes the bottom; the
    timings run backward passes)."""
    params = list(model.parameters())
    flags, grads, mode = [p.requires_grad for p in params], [p.grad for p in params], model.training
    for p in params:
        p.grad = None  # the timed backward passes accumulate into fresh tensors, not into the caller's gradients
    try:
        yield
    finally:
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
        model.train(mode)


def _scan(rec: Recycled, examples: Iterable[Any], sample: int, seed: int):
    """(distinct keys as bytes, the length of each (-1: not a token sequence), a seeded sample of distinct
    (example, inputs), examples read): one pass, a key and a length per example held."""
    keys, lengths, picked, order = [], array.array("q"), [], random.Random(seed)
    seen_sample: set[str] = set()
    count, pending = 0, []
    for i, example in enumerate(examples):
        k, inputs, _ = rec.pipeline.encode(example, f"example {i}")
        pending.append(k)
        if len(pending) == 1 << 16:  # keys as 20 bytes each, not a str per example
            keys.append(key_bytes(pending))
            pending = []
        lengths.append(data.length(inputs) if "input_ids" in inputs else -1)
        count += 1
        if k in seen_sample:
            continue
        if len(picked) < sample:  # reservoir sampling over the distinct keys met so far
            picked.append((example, inputs, k))
            seen_sample.add(k)
        elif (j := order.randrange(count)) < sample:
            seen_sample.discard(picked[j][2])
            picked[j] = (example, inputs, k)
            seen_sample.add(k)
    raw, first = np.unique(np.concatenate([*keys, key_bytes(pending)]), return_index=True)
    return raw, np.frombuffer(lengths, np.int64)[first] if count else np.zeros(0, np.int64), picked, count


def _rows(states: Sequence[torch.Tensor], inputs: Sequence[dict], lengths: np.ndarray) -> tuple[int, bool]:
    """Rows the new entries hold: each one's length where the sample's states have one row per token, else the
    sample's rows per entry times the entries (fixed-size inputs: exact when the sample's are all alike)."""
    got = [int(s.shape[0]) for s in states]
    if all("input_ids" in x and data.length(x) == n for x, n in zip(inputs, got)) and (lengths >= 0).all():
        return int(lengths.sum()), True
    return math.ceil(sum(got) / len(got) * len(lengths)), len(set(got)) == 1


def _time(rec: Recycled, model: nn.Module, rows: list[dict], examples: list, batch_size: int, codec: str,
          key: Any, tokenizer: Any, options: dict) -> tuple[list[torch.Tensor], dict[str, float]]:
    """The sample's states and the seconds per example of each part (see the module's docstring)."""
    device = device_of(rec.bottom)
    chunks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    with torch.no_grad():
        rec.pipeline.bottom_states(chunks[0], device)  # warm-up: first-call costs are not per example
        states, bottom = _timed(lambda: [s for b in chunks for s in rec.pipeline.bottom_states(b, device)])
    with tempfile.TemporaryDirectory(prefix="lr-plan-") as tmp:
        scratch = recycle(model, rec.at, store=DiskStore(Path(tmp) / "store", codec=codec), key=key,
                          tokenizer=tokenizer, **options)
        _, fill = _timed(lambda: scratch.fill(examples, batch_size=batch_size, progress=False))
        loader = scratch.loader(examples, batch_size=batch_size, progress=False)
        read_batches, read = _timed(lambda: list(loader))
        scratch.train()
        _, top = _timed(lambda: [_backward(scratch(**b)) for b in read_batches])
        scratch.store.close()
    model.requires_grad_(True)
    model.train()
    full_batches = [batches.collate_inputs(b, rec.pipeline.pad_id, rec.arch.masked) for b in chunks]
    _, full = _timed(lambda: [_backward(model(**{k: v.to(device) for k, v in b.items()})) for b in full_batches])
    n = len(rows)
    return states, {"fill": fill / n, "bottom": bottom / n, "top": top / n, "read": read / n, "full": full / n}


def _timed(run):
    start = time.perf_counter()
    out = run()
    return out, time.perf_counter() - start


def _backward(out: Any) -> None:
    """Backward from the output's loss, or from the sum of its first floating tensor (the cost of a step's
    backward, whatever the loss)."""
    loss = getattr(out, "loss", None)
    if loss is None:
        values = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else [out]
        first = next(v for v in values if torch.is_tensor(v) and v.is_floating_point())
        loss = first.float().sum()
    loss.backward()
