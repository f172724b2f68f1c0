"""Batches to an accelerator: read ahead of the step, copied from pinned memory without blocking, and the stored
states converted to the model's dtype on the device (float16/bfloat16 cross the bus at their stored size, int8
as its codes and one side record per row: its scale and its kept values).

On a GPU the top's step takes milliseconds; reading the store, decoding and copying must overlap it or they
become the step. ``DeviceLoader`` wraps a DataLoader: with workers, they read ahead; without, a thread does.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

import torch

from .batches import SCALES
from .stores.codecs import dequantize

_END = object()


class DeviceLoader:
    """The batches of ``loader`` on ``device``; ``states`` (in each field's dict too) as ``dtype``, converted there
    from the stored dtype (int8: codes times their row's scale, kept values written back). Any other attribute is
    the loader's (``batch_sampler.set_epoch``, ``dataset``, ``len``)."""

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device | str, dtype: torch.dtype,
                 read_ahead: int = 2):
        self.loader, self.device, self.dtype, self.read_ahead = loader, torch.device(device), dtype, read_ahead

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches = iter(self.loader) if self.loader.num_workers else read_ahead(iter(self.loader), self.read_ahead)
        for batch in batches:
            yield self._move(batch)

    def _move(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` on the device; a field of examples of several inputs (a dict) likewise. ``states`` (int8
        codes with their side records, ``SCALES``) become ``dtype`` there."""
        out = {name: self._move(value) if isinstance(value, dict) else
               value.to(self.device, non_blocking=True) if isinstance(value, torch.Tensor) else value
               for name, value in batch.items()}  # from pinned memory: the copies overlap the step
        if "states" in out:
            out["states"] = dequantize(out["states"], out.pop(SCALES, None), self.dtype)
        return out


def read_ahead(batches: Iterator, depth: int) -> Iterator:
    """``batches``, produced up to ``depth`` ahead in a thread (store reads release the GIL); an error in the
    thread is raised here, at the batch it stopped at. Stopping early stops the thread."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                if not _offer(slots, (batch, None), stop):
                    return
            _offer(slots, (_END, None), stop)
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer, never swallowed
            _offer(slots, (None, err), stop)

    thread = threading.Thread(target=produce, name="layer-recycling-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            batch, err = slots.get()
            if err is not None:
                raise err
            if batch is _END:
                return
            yield batch
    finally:
        stop.set()
        thread.join(timeout=60)


def _offer(slots: queue.Queue, item: tuple, stop: threading.Event) -> bool:
    """Put ``item`` unless the consumer stopped; False when it did."""
    while not stop.is_set():
        try:
            slots.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
