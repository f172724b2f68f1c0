"""files.py: a store directory turned against its reader (links, FIFOs, devices, directories, deep and huge JSON are
refused as StoreCorrupted naming the file, never followed, waited on or served), and the helpers themselves:
atomic writes, a first creator that wins, checksummed JSON, index files mapped only once checked."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest

from layer_recycling.stores.disk import DiskStore, StoreCorrupted
from layer_recycling.stores.files import (
    MAX_FINGERPRINT_BYTES, MAX_JSON_BYTES, DiskFull, atomic_write, blake, checksummed, create_once, load_npy, npy_bytes,
    parse_checksummed,
)
from store_helpers import filled, opens_and_reads


@contextlib.contextmanager
def deadline(seconds: float = 20.0):
    """Fail instead of hanging: a blocked open or an endless read is interrupted (the handler's error propagates
    out of the system call)."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: the store hung its reader")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def store(tmp_path: Path) -> tuple[Path, dict]:
    """A store of one committed segment, and that segment's header."""
    path = tmp_path / "s"
    filled(path, n=8, per_put=8).close()
    h = json.loads(next(path.glob("seg-*.json")).read_bytes())["doc"]
    return path, h


def segment_file(path: Path, h: dict, suffix: str) -> Path:
    return path / f"{h['name']}.{h['token']}.{suffix}"


def refused(path: Path, name: str, what: str) -> None:
    """Opening the store and reading every entry raises StoreCorrupted naming ``name`` and ``what``, in time."""
    with deadline(), pytest.raises(StoreCorrupted) as err:
        opens_and_reads(path)
    message = str(err.value)
    assert name in message and what in message.replace(str(path), ""), message  # not in the test's own path


def test_a_data_file_linked_outside_the_store_is_refused_even_with_the_right_bytes(tmp_path):
    path, h = store(tmp_path)
    data = segment_file(path, h, "data")
    outside = tmp_path / "elsewhere.data"
    shutil.move(data, outside)  # the very bytes its checksum names: only the link is wrong
    data.symlink_to(outside)
    refused(path, data.name, "symbolic link")


def test_an_index_linked_to_dev_zero_is_refused_without_reading_it(tmp_path):
    path, h = store(tmp_path)
    keys = segment_file(path, h, "keys.npy")
    keys.unlink()
    keys.symlink_to("/dev/zero")
    refused(path, keys.name, "symbolic link")


PLANTED = {"FIFO": os.mkfifo, "directory": os.mkdir}  # what is put where a file belongs


@pytest.mark.parametrize("name", ["keys.npy", "spans.npy", "data", "json", "store.json"])
@pytest.mark.parametrize("kind", PLANTED)
def test_a_fifo_or_a_directory_where_a_file_belongs_is_refused_without_waiting(tmp_path, kind, name):
    """A FIFO would block the open until a writer came; a directory opens for reading and fails later."""
    path, h = store(tmp_path)
    target = {"json": path / f"{h['name']}.json", "store.json": path / "store.json"}.get(name)
    target = target or segment_file(path, h, name)
    target.unlink()
    PLANTED[kind](target)
    refused(path, target.name, kind)


def test_cleanup_leaves_a_directory_under_one_of_our_names(tmp_path):
    path, h = store(tmp_path)
    stray = path / "seg-gone-000000.0123456789ab.data"  # named like a killed writer's leftover
    stray.mkdir()
    (path / "seg-gone-000000.0123456789ab.keys.npy").write_bytes(b"left over")
    assert DiskStore(path).cleanup(grace=0) == 1 and stray.is_dir()
    opens_and_reads(path)


def test_a_deeply_nested_json_header_is_refused(tmp_path):
    path, h = store(tmp_path)
    header = path / f"{h['name']}.json"
    depth = 200_000  # 400 kB: under the size bound, far past the parser's recursion limit
    header.write_text('{"blake2b": "' + "0" * 64 + '", "doc": ' + "[" * depth + "]" * depth + "}")
    refused(path, header.name, "nested too deeply")


@pytest.mark.parametrize("name", ["fingerprint.json", "json"])
def test_a_huge_json_file_is_refused_unread(tmp_path, name):
    path, h = store(tmp_path)
    target = path / ("fingerprint.json" if name == "fingerprint.json" else f"{h['name']}.json")
    with open(target, "ab") as f:
        f.truncate(1 << 40)  # sparse: reading it would take hours and a terabyte of memory
    limit = MAX_FINGERPRINT_BYTES if name == "fingerprint.json" else MAX_JSON_BYTES
    with deadline(), pytest.raises(StoreCorrupted, match=f"{target.name} holds {1 << 40} bytes; .* at most {limit}"):
        DiskStore(path, readonly=True).fingerprint_parts
        opens_and_reads(path)


def test_a_huge_index_is_refused_before_it_is_hashed(tmp_path):
    path, h = store(tmp_path)
    keys = segment_file(path, h, "keys.npy")
    os.truncate(keys, 1 << 40)  # its .npy header is intact; hashing it would read a terabyte
    refused(path, keys.name, "its header promises")


def test_a_json_file_rewritten_in_another_form_is_refused(tmp_path):
    """Whitespace that keeps the document still changes the file: a file is read only in the form it was written,
    so no byte of a store can change without changing its digest."""
    path, h = store(tmp_path)
    header = path / f"{h['name']}.json"
    header.write_text(json.dumps(json.loads(header.read_bytes()), indent=1))
    refused(path, header.name, "canonical form")
    header.write_bytes(checksummed(h))
    opens_and_reads(path)


# ---- the helpers themselves, without a store -----------------------------------------------------------------


def test_atomic_write_leaves_the_whole_file_or_the_old_one_and_no_temp(tmp_path):
    path = tmp_path / "f.data"
    atomic_write(path, [b"head", np.arange(3, dtype=np.int16)], finish=lambda fd: os.pwrite(fd, b"HEAD", 0))
    assert path.read_bytes() == b"HEAD" + np.arange(3, dtype=np.int16).tobytes()

    def parts():  # the disk fills after the first part
        yield b"new"
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFull, match="no space left writing .*f.data.*Entries committed before are intact"):
        atomic_write(path, parts())
    assert path.read_bytes().startswith(b"HEAD") and os.listdir(tmp_path) == ["f.data"]  # old content, no temp


def test_create_once_keeps_the_first_creators_file():
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "store.json"
        assert create_once(path, b"first") is True and create_once(path, b"second") is False
        assert path.read_bytes() == b"first" and os.listdir(d) == ["store.json"]


@pytest.mark.parametrize("raw, words", [
    (b'{"blake2b":"00","doc":{"a":1}}', "fails its checksum"),
    (b"[1, 2", "not a valid header"),
    (b'{"doc":{"a":1}}', "not a valid header \\(KeyError"),
])
def test_a_checksummed_document_is_refused_when_damaged(raw, words):
    assert parse_checksummed(checksummed({"a": 1}), Path("h.json"), "header") == {"a": 1}
    with pytest.raises(StoreCorrupted, match=words):
        parse_checksummed(raw, Path("h.json"), "header")


def test_an_index_is_mapped_only_with_its_header_size_and_checksum(tmp_path):
    arr = np.arange(6, dtype=np.int64).reshape(3, 2)
    (tmp_path / "i.npy").write_bytes(npy_bytes(arr))
    good = blake(npy_bytes(arr))
    np.testing.assert_array_equal(load_npy(tmp_path / "i.npy", good, np.dtype(np.int64), (3, 2)), arr)
    with pytest.raises(StoreCorrupted, match=r"holds int64\(3, 2\), expected int32\(3, 2\)"):
        load_npy(tmp_path / "i.npy", good, np.dtype(np.int32), (3, 2))
    with pytest.raises(StoreCorrupted, match="fails its checksum"):
        load_npy(tmp_path / "i.npy", "0" * 64, np.dtype(np.int64), (3, 2))
    (tmp_path / "i.npy").write_bytes(npy_bytes(arr) + b"\0")
    with pytest.raises(StoreCorrupted, match="header promises .*truncated or padded"):
        load_npy(tmp_path / "i.npy", good, np.dtype(np.int64), (3, 2))
    with pytest.raises(StoreCorrupted, match="named by a committed index but missing"):
        load_npy(tmp_path / "gone.npy", good, np.dtype(np.int64), (3, 2))
