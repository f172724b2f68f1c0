"""Fill a store from a Ray Data dataset: actors run the bottom, a Datasink writes, one commit at the end.

``pip install 'layer-recycling[ray]'``; nothing else in the library imports Ray. Examples are keyed in cheap
tasks, hash-partitioned by key (duplicates meet in one block), and only keys the store lacks reach the bottom.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any, Callable

import numpy as np
import torch

from ..model import Recycled
from ..pipeline import Keyer

KEY = "__lr_key"  # the column that carries each example's key between stages


def fill_from_dataset(make_recycled: Callable[[], Recycled], dataset: Any, *, batch_size: int = 32,
                      concurrency: int = 2, num_gpus: float = 0, num_cpus: float = 1) -> dict:
    """Fill the store of ``make_recycled()`` with the bottom's states for every example of a ``ray.data.Dataset``.

    Args:
        make_recycled: builds the recycled model with its ``DiskStore`` (on a filesystem every node shares);
            called once on the driver (to check the store's fingerprint) and once in each actor.
        dataset: rows are examples, as ``rec.fill`` takes them (e.g. ``ray.data.from_items(examples)``).
        batch_size: examples per bottom batch; ``concurrency`` actors, each with ``num_gpus``/``num_cpus``
            (leave CPUs free for the keying and shuffle tasks: on 2 CPUs, 2 actors of 0.5).
    Returns:
        {"computed": entries written, "segments": what the write tasks committed, "snapshot": the merged name}.
    Raises:
        TypeError: the store is not shared by processes (a DiskStore is).
    """
    import ray.data

    rec = make_recycled()
    if not rec.pipeline.shared:
        raise TypeError(f"fill_from_dataset needs a store every actor shares (a DiskStore), got {rec.store!r}")
    sink = _sink_class()(rec.store)
    keyed = dataset.map_batches(functools.partial(_key_batch, rec.pipeline.keyer), batch_format="pandas")
    states = keyed.repartition(concurrency * 4, keys=[KEY]).map_batches(
        _Bottom, fn_constructor_args=(make_recycled, batch_size), batch_format="pandas", batch_size=None,
        compute=ray.data.ActorPoolStrategy(size=concurrency), num_gpus=num_gpus, num_cpus=num_cpus)
    states.write_datasink(sink)
    return sink.summary


def _key_batch(keyer: Keyer, frame):
    """The batch with each example's key (as the pipeline keys it) in a column."""
    frame[KEY] = [keyer.encode(row)[0] for row in frame.to_dict("records")]
    return frame


class _Bottom:
    """An actor: builds the model once, runs the bottom on the keys its store lacks, returns (key, state) rows."""

    def __init__(self, make_recycled: Callable[[], Recycled], batch_size: int):
        self.rec, self.batch_size = make_recycled(), batch_size
        self.rec.eval()

    def __call__(self, frame):
        import pandas as pd

        rows = frame.drop(columns=[KEY]).to_dict("records")
        pipe = self.rec.pipeline
        # Every copy of a key, as pairs: a key= given to two different inputs is refused (copies meet in one block).
        keyed = [(k, pipe.encode(r)[1]) for k, r in zip(frame[KEY], rows)]
        keys, arrays, checks = [], [], []
        for i, (chunk, inputs, states) in enumerate(pipe.computed(pipe.missing(keyed), self.batch_size)):
            pipe.check_states(chunk, states, lambda _: "an example of the dataset", measure=i == 0)  # as put does
            keys += chunk
            arrays += [s.float().cpu().numpy() for s in states]
            checks += pipe.checks_of(inputs) or []
        columns = {KEY: keys, "state": [a.reshape(-1) for a in arrays], "shape": [list(a.shape) for a in arrays]}
        if checks:  # a user's key: the entry keeps a digest of its inputs (see Pipeline.put)
            columns["check"] = checks
        return pd.DataFrame(columns)


def _sink_class():
    from ray.data import Datasink

    class StoreSink(Datasink):
        """Write tasks add their rows to the store and commit them; the completion hook merges once."""

        def __init__(self, store):
            self.store, self.summary = store, {}
            self.run = uuid.uuid4().hex[:8]  # this fill's writers: a later fill never replaces their segments

        def write(self, blocks, ctx) -> dict:
            from ray.data.block import BlockAccessor

            # One writer name per task of this fill: a retried task numbers its segments after those a failed
            # attempt committed (a key stored twice is harmless: the first copy wins, the merge keeps one).
            store = self.store.as_writer(f"ray-{self.run}-task-{ctx.task_idx}")
            written = 0
            for block in blocks:
                frame = BlockAccessor.for_block(block).to_pandas()
                if not len(frame):
                    continue  # a partition whose keys were all stored: Ray may hand it on without columns
                values = [torch.from_numpy(np.array(s, dtype=np.float32).reshape(shape))
                          for s, shape in zip(frame["state"], frame["shape"])]
                checks = list(frame["check"]) if "check" in frame else None
                store.put_many(list(frame[KEY]), values, checks=checks)
                written += len(values)
            store.close()  # commits what it buffered
            return {"task": ctx.task_idx, "entries": written}

        def on_write_complete(self, write_result) -> None:
            self.store.refresh()
            merged = self.store.compact()  # one merged snapshot, published once; a failed write publishes none
            self.summary.update(computed=sum(r["entries"] for r in write_result.write_returns),
                                segments=write_result.write_returns, snapshot=merged)

    return StoreSink
