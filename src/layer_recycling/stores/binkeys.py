"""Keys on disk: a content digest (40 hex chars, ``lr.digest``) is kept as 20 bytes, sorted and searched bytewise."""

from __future__ import annotations

import re

import numpy as np

KEY_BYTES = 20  # lr.digest's blake2b digest size: a key is stored as these bytes, not as 40 hex chars
KEY_DTYPE = np.dtype(f"S{KEY_BYTES}")  # fixed width: sorts and searches bytewise
_HEX_KEY = re.compile(r"[0-9a-f]{40}")
_NOT_HEX = str.maketrans("", "", "0123456789abcdef")


def key_bytes(keys) -> np.ndarray:
    """Hex digests (``lr.digest``) as a KEY_DTYPE array, in order.

    Raises:
        TypeError: a key is not a str; ValueError: a str that is not 40 lowercase hex chars.
    """
    keys = list(keys)
    if not _all_hex_keys(keys):
        for k in keys:  # find the first bad key, to name it
            if not isinstance(k, str):
                raise TypeError(f"store keys are str content digests, got {type(k).__name__}; use lr.digest(obj)")
            if not _HEX_KEY.fullmatch(k):
                raise ValueError(
                    f"store keys are 40-char hex content digests, got {k[:60]!r}: DiskStore keeps keys as 20 binary "
                    f"bytes. Use lr.digest(obj) for your key"
                )
    return np.frombuffer(bytes.fromhex("".join(keys)), KEY_DTYPE) if keys else np.empty(0, KEY_DTYPE)


def maybe_key_bytes(keys) -> tuple[np.ndarray, np.ndarray]:
    """(binary keys, valid mask): a key that is not a hex digest cannot be stored, so it is simply absent."""
    if _all_hex_keys(keys):
        return key_bytes(keys), np.ones(len(keys), bool)
    valid = np.fromiter((isinstance(k, str) and bool(_HEX_KEY.fullmatch(k)) for k in keys), bool, len(keys))
    joined = "".join(k if ok else "0" * 40 for k, ok in zip(keys, valid))
    return (np.frombuffer(bytes.fromhex(joined), KEY_DTYPE) if len(keys) else np.empty(0, KEY_DTYPE)), valid


def _all_hex_keys(keys) -> bool:
    """Whether every key is a str of 40 lowercase hex chars: one regex over them all, not one per key."""
    try:
        joined = "".join(keys)
    except TypeError:
        return False
    return set(map(len, keys)) <= {40} and not joined.translate(_NOT_HEX)  # deleting the hex digits leaves none


def key_strs(arr: np.ndarray) -> list[str]:
    """Binary keys back to hex digests (via one bytes object: S20 items would drop trailing zero bytes)."""
    h = np.ascontiguousarray(arr).tobytes().hex()
    return [h[i : i + 40] for i in range(0, len(h), 40)]
