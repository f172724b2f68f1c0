"""A sorted index searched block by block: the answers of a binary search, and none of its pages mapped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from layer_recycling.stores.fenced import FENCE, Fenced
from layer_recycling.stores.files import StoreCorrupted, hash_file, load_npy


def sorted_keys(n: int, seed: int = 0) -> np.ndarray:
    raw = np.random.default_rng(seed).integers(0, 256, (2 * n + 8, 20), np.uint8).view("S20").reshape(-1)
    return np.unique(raw)[:n]


def mapped(tmp_path: Path, name: str, array: np.ndarray) -> np.ndarray:
    """``array`` written as an index file and mapped as a store maps it (``files.load_npy``)."""
    path = tmp_path / f"{name}.npy"
    np.save(path, array)
    return load_npy(path, hash_file(path, "index file"), array.dtype, array.shape)


@pytest.mark.parametrize("n", [0, 1, FENCE - 1, FENCE, FENCE + 1, 5 * FENCE + 7])
def test_finds_what_a_binary_search_finds(tmp_path, n):
    keys = sorted_keys(n)
    locs = np.arange(3 * n, dtype=np.int64).reshape(n, 3)
    others = sorted_keys(50, seed=1)  # misses, some below the first key and above the last
    q = np.concatenate([keys[::-1], others, np.array([b"\0" * 20, b"\xff" * 20], "S20")])
    valid = np.ones(len(q), bool)
    valid[::7] = False  # not asked: never found
    index = Fenced(mapped(tmp_path, "k", keys), mapped(tmp_path, "l", locs))
    hit, rows = index.find(q, valid)
    want = np.isin(q, keys) & valid
    assert np.array_equal(hit, want)
    assert np.array_equal(rows, locs[np.searchsorted(keys, q[want])])
    for bound in q[:40]:  # the merge's counts: its fences, then one block
        assert [index.rank(bound, side) for side in ("left", "right")] == [
            int(np.searchsorted(keys, bound, side)) for side in ("left", "right")]


def test_an_index_file_replaced_after_its_check_is_refused(tmp_path):
    keys = sorted_keys(10)
    checked = mapped(tmp_path, "k", keys)
    np.save(tmp_path / "k.npy", sorted_keys(10, seed=3))  # another file in its place (a new inode)
    with pytest.raises(StoreCorrupted, match="replaced after it was checked"):
        Fenced(checked, mapped(tmp_path, "l", np.zeros((10, 3), np.uint32)))


def _rss_file() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise KeyError("RssFile")


def test_a_search_leaves_no_more_than_a_group_of_blocks_resident(tmp_path):
    """A binary search over a mapped index of 300,000 keys (6 MB) leaves most of its pages mapped; searching it
    block by block (read with pread) maps none, whatever the index's size."""
    keys = sorted_keys(300_000)
    locs = np.zeros((len(keys), 3), np.uint32)
    q = keys[np.random.default_rng(2).choice(len(keys), 8192, replace=False)]
    plain = mapped(tmp_path, "plain", keys)
    before = _rss_file()
    np.searchsorted(np.asarray(plain), q)
    touched = _rss_file() - before  # the control: what a plain search leaves
    index = Fenced(mapped(tmp_path, "k", keys), mapped(tmp_path, "l", locs))
    before = _rss_file()
    hit, _ = index.find(q, np.ones(len(q), bool))
    left = _rss_file() - before
    assert hit.all()
    assert touched > 3 << 20, f"a plain binary search left only {touched} B mapped: the measure sees nothing"
    # What is left is the code's own pages (a few dozen kB), not the index's: a group's blocks alone are 2 MB.
    assert left < min(touched // 8, 512 << 10), f"{left} B stayed resident after a search block by block"
