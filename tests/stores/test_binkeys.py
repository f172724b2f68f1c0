"""binkeys.py: keys as 20 bytes on disk, in order, sorted bytewise; bad keys named or simply absent."""

from __future__ import annotations

import numpy as np
import pytest

import layer_recycling as lr
from layer_recycling.stores.binkeys import KEY_DTYPE, key_bytes, key_strs, maybe_key_bytes

KEYS = [lr.digest(i) for i in range(5)] + ["00" * 19 + "00", "ff" * 20, "ab" * 19 + "00"]  # trailing zero bytes too


def test_keys_round_trip_through_their_bytes_in_order():
    arr = key_bytes(KEYS)
    assert arr.dtype == KEY_DTYPE == np.dtype("S20") and len(arr) == len(KEYS)
    assert arr.tobytes() == bytes.fromhex("".join(KEYS))  # the bytes a segment's keys file holds
    assert key_strs(arr) == KEYS  # S20 items drop trailing zeros; the round trip must not
    assert key_strs(np.sort(arr)) == sorted(KEYS)  # bytewise order is hex order: a sorted index is searchable
    assert key_bytes([]).dtype == KEY_DTYPE and key_strs(key_bytes([])) == []


@pytest.mark.parametrize("bad, error, words", [
    (7, TypeError, "got int; use lr.digest"),
    ("item-7", ValueError, "got 'item-7'.*20 binary bytes"),
    ("AB" * 20, ValueError, "40-char hex"),  # upper case: another key than its lower-case twin
    ("ab" * 21, ValueError, "40-char hex"),
])
def test_a_key_that_is_not_a_hex_digest_is_named(bad, error, words):
    with pytest.raises(error, match=words):
        key_bytes([KEYS[0], bad])


def test_a_lookup_key_that_cannot_be_stored_is_simply_absent():
    arr, valid = maybe_key_bytes([KEYS[0], "item-7", 3, KEYS[1]])
    assert valid.tolist() == [True, False, False, True]
    assert key_strs(arr[valid]) == KEYS[:2]
    arr, valid = maybe_key_bytes([])
    assert len(arr) == 0 and arr.dtype == KEY_DTYPE and valid.dtype == bool
