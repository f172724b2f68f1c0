"""buffer.py: a writer's uncommitted entries in one array (cut by entry, reused after a commit), the checks on
a put's values, and the commit thread that keeps its error for the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import layer_recycling as lr
from layer_recycling.stores.buffer import Commit, WriteBuffer, encode_batch, new_entries
from layer_recycling.stores.codecs import CODECS, decode

KEYS = [lr.digest(i) for i in range(6)]


def rows(n: int, start: float = 0.0) -> np.ndarray:
    return np.arange(start, start + 3 * n, dtype=np.float32).reshape(n, 3)


def test_entries_are_cut_from_one_array_in_the_order_they_came():
    buf = WriteBuffer(limit=1 << 10)
    buf.add(KEYS[:2], rows(3), None, [2, 1], {KEYS[1]: "check"})
    buf.add(KEYS[2:3], rows(4, 100), None, [4], {})
    assert len(buf) == 3 and KEYS[2] in buf and KEYS[3] not in buf
    assert buf.feature() == [3] and buf.nbytes == 7 * 3 * 4
    np.testing.assert_array_equal(buf.rows(KEYS[1])[0], rows(3)[2:])
    np.testing.assert_array_equal(buf.rows(KEYS[2])[0], rows(4, 100))
    keys, data, scales, lengths, checks = buf.take(np.ones(3, bool))
    assert keys == KEYS[:3] and lengths.tolist() == [2, 1, 4] and checks == {KEYS[1]: "check"} and scales is None
    np.testing.assert_array_equal(np.concatenate(data), np.concatenate([rows(3), rows(4, 100)]))


def test_take_leaves_out_the_entries_committed_meanwhile():
    buf = WriteBuffer(limit=1 << 10)
    buf.add(KEYS[:3], rows(6), None, [1, 2, 3], {KEYS[0]: "c0", KEYS[2]: "c2"})
    keys, data, _, lengths, checks = buf.take(np.array([True, False, True]))
    assert keys == [KEYS[0], KEYS[2]] and lengths.tolist() == [1, 3] and checks == {KEYS[0]: "c0", KEYS[2]: "c2"}
    np.testing.assert_array_equal(np.concatenate(data), rows(6)[[0, 3, 4, 5]])


def test_a_full_buffer_grows_without_losing_rows_and_a_spare_of_another_kind_is_not_reused():
    buf = WriteBuffer(limit=8)  # room for less than one batch: it must make more
    buf.add(KEYS[:1], rows(2), None, [2], {})
    buf.add(KEYS[1:2], rows(5, 50), None, [5], {})
    np.testing.assert_array_equal(buf.rows(KEYS[0])[0], rows(2))
    np.testing.assert_array_equal(buf.rows(KEYS[1])[0], rows(5, 50))
    spare = buf.arrays()
    again = WriteBuffer(limit=8, spare=spare)
    again.add(KEYS[2:3], rows(1), None, [1], {})
    assert again.data is spare[0]  # the committed buffer's array is filled again
    wide = WriteBuffer(limit=8, spare=spare)
    wide.add(KEYS[3:4], np.zeros((1, 5), np.float16), None, [1], {})
    assert wide.data is not spare[0] and wide.data.dtype == np.float16 and wide.feature() == [5]


def test_extend_puts_a_failed_commit_back_with_its_side_records():
    """A commit that failed returns its entries to the buffer: int8 rows keep their scales and kept values."""
    codec = CODECS["int8-outliers"]
    values = [torch.randn(2, 16), torch.randn(3, 16) * 50]
    data, scales = encode_batch(KEYS[:2], values, codec)
    failed, current = WriteBuffer(), WriteBuffer()
    failed.add(KEYS[:2], data, scales, [2, 3], {})
    current.add(KEYS[2:3], *encode_batch(KEYS[2:3], [torch.ones(1, 16)], codec), [1], {})
    failed.extend(current)
    assert list(failed.entries) == KEYS[:3]
    for key, value in zip(KEYS[:3], [*values, torch.ones(1, 16)]):
        got = decode(*failed.rows(key), codec, None, torch.float32)
        assert torch.allclose(got, value, atol=float(value.abs().max()) / 100)


def test_encode_batch_names_the_entry_it_cannot_store():
    with pytest.raises(ValueError, match=f"{KEYS[1]}.*65504"):
        encode_batch(KEYS[:2], [torch.ones(1, 4), torch.full((1, 4), 1e6)], CODECS["float16"])


def test_new_entries_keeps_the_first_copy_of_each_key_not_buffered_yet():
    held = WriteBuffer()
    held.add(KEYS[:1], rows(1), None, [1], {})
    values = [torch.ones(1, 3), torch.zeros(2, 3), torch.full((1, 3), 2.0), torch.full((1, 3), 3.0)]
    keys, kept, fresh = new_entries([KEYS[0], KEYS[1], KEYS[1], KEYS[2]], values, [None, "a", "b", None], [3], [held])
    assert keys == KEYS[1:3] and kept[0] is values[1] and kept[1] is values[3] and fresh == {KEYS[1]: "a"}


@pytest.mark.parametrize("value, error, words", [
    (torch.ones(2, 4, dtype=torch.int64), TypeError, "floating tensors.*torch.int64"),
    (torch.tensor(1.0), TypeError, "floating tensors of >= 1 dim"),
    ([1.0, 2.0], TypeError, "got a list"),
    (torch.ones(2, 5), ValueError, r"shape \(2, 5\).*\(n, 3\).*one store per state shape"),
])
def test_a_value_the_store_cannot_hold_is_refused_naming_its_key(value, error, words):
    with pytest.raises(error, match=words):
        new_entries(KEYS[:2], [torch.ones(1, 3), value], [None, None], [3], [])


def test_a_commit_thread_keeps_its_error_for_the_store_to_raise():
    def fail():
        raise OSError(28, "No space left on device")

    ok, failed = Commit(lambda: None), Commit(fail)
    ok.join()
    failed.join()
    assert ok.error is None and isinstance(failed.error, OSError) and not failed.daemon  # a commit finishes at exit
