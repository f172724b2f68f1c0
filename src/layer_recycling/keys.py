"""Content keys: a hashlib digest of an object's canonical bytes, equal across processes and machines.

Never Python's ``hash()`` (salted per process). Arrays and tensors hash their dtype, shape and bytes, so a
numpy array and a torch tensor with the same content get the same key; lists and tuples are the same sequence.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

DIGEST_SIZE = 20  # 160 bits: collisions are out of reach for any dataset; keys stay short.


def digest(obj: Any) -> str:
    """The content key of ``obj`` as a hex string.

    Supported: None, bool, int, float, str, bytes, numpy arrays and scalars, torch tensors, PIL images,
    mappings (order-independent), lists/tuples, and any nesting of these.

    Raises:
        TypeError: ``obj`` (or something inside it) has no canonical bytes; the message names its type.
    """
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    _feed(h, obj)
    return h.hexdigest()


def _frame(h, tag: bytes, payload: bytes | memoryview) -> None:
    h.update(tag + struct.pack("<Q", len(payload)))
    h.update(payload)


def _feed(h, obj: Any) -> None:
    if obj is None:
        h.update(b"N")
    elif isinstance(obj, (bool, np.bool_)):
        h.update(b"T" if obj else b"F")
    elif isinstance(obj, (int, np.integer)):
        _frame(h, b"I", str(int(obj)).encode())
    elif isinstance(obj, (float, np.floating)):
        _frame(h, b"R", float(obj).hex().encode())
    elif isinstance(obj, str):
        _frame(h, b"S", obj.encode("utf-8", "surrogatepass"))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        _frame(h, b"B", bytes(obj))
    elif isinstance(obj, (np.ndarray, torch.Tensor)):
        _feed_array(h, obj)
    elif _is_pil_image(obj):
        _frame(h, b"P", f"{obj.mode}:{obj.size[0]}x{obj.size[1]}".encode())
        _frame(h, b"p", obj.tobytes())
        if obj.mode in ("P", "PA"):  # pixels are palette indices: the palette decides the colours
            _frame(h, b"c", bytes(obj.getpalette() or []))
    elif isinstance(obj, Mapping):
        _feed_mapping(h, obj)
    elif isinstance(obj, (list, tuple)):
        h.update(b"L" + struct.pack("<Q", len(obj)))
        for item in obj:
            _feed(h, item)
    else:
        raise TypeError(
            f"cannot compute a content key for an object of type {type(obj).__module__}.{type(obj).__qualname__}; "
            f"supported: str, bytes, numbers, None, numpy arrays, torch tensors, PIL images, dicts, lists and "
            f"tuples of these. Pass key=callable (e.g. key=lambda example: example['id']) to key it yourself."
        )


def _feed_array(h, arr: np.ndarray | torch.Tensor) -> None:
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().contiguous()
        dtype = _TORCH_DTYPE_NAMES.get(arr.dtype) or str(arr.dtype)
        shape = tuple(arr.shape)
        raw = arr.reshape(-1).view(torch.uint8).numpy() if arr.numel() else np.empty(0, np.uint8)
    else:
        if arr.dtype.hasobject:
            raise TypeError(
                f"cannot key a numpy array of dtype object (shape {arr.shape}); convert it to a numeric or "
                f"string dtype, or pass key=callable"
            )
        arr = np.ascontiguousarray(arr)
        dtype, shape = arr.dtype.newbyteorder("<").str, arr.shape
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).reshape(-1).view(np.uint8)
    _frame(h, b"A", f"{dtype}:{shape}".encode())
    _frame(h, b"a", memoryview(raw))


_TORCH_DTYPE_NAMES = {
    getattr(torch, name): np.dtype(name).newbyteorder("<").str
    for name in ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")
}


def _feed_mapping(h, obj: Mapping) -> None:
    items = []
    for k, v in obj.items():
        kh = hashlib.blake2b(digest_size=DIGEST_SIZE)
        _feed(kh, k)
        items.append((kh.digest(), v))
    h.update(b"D" + struct.pack("<Q", len(items)))
    for kd, v in sorted(items, key=lambda kv: kv[0]):
        h.update(kd)
        _feed(h, v)


def _is_pil_image(obj: Any) -> bool:
    # Checked by class name so that Pillow is never imported here: it is an optional dependency.
    return any(c.__module__.startswith("PIL.") and c.__name__ == "Image" for c in type(obj).__mro__)
