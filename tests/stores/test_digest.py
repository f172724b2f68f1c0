"""A store's digest pins it: stable on reopen, changed by any committed change, and a store opened with a digest
refuses a forged copy (a segment rewritten with its checksums recomputed, another model's fingerprint.json)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import layer_recycling as lr
from layer_recycling.stores.disk import DigestMismatch, DiskStore, StoreCorrupted
from layer_recycling.stores.files import blake, checksummed
from store_helpers import FORK, filled, keys, value

FP_A, FP_B = lr.Fingerprint({"weights": "a" * 40, "split": "3 of 6"}), lr.Fingerprint({"weights": "b" * 40,
                                                                                        "split": "3 of 6"})


def published(tmp_path: Path, name: str = "s", fingerprint: lr.Fingerprint = FP_A) -> tuple[Path, str]:
    """A finished store (a merged generation and an unmerged segment) and the digest its maker publishes."""
    path = tmp_path / name
    store = filled(path, n=12, per_put=4)
    store.compact()
    store.put_many(keys(3, start=100), [value(k) for k in keys(3, start=100)])
    store.flush()
    store.bind_fingerprint(fingerprint)
    return path, store.digest()


def forge_data(path: Path) -> None:
    """Change a value in the newest segment's data and recompute every checksum a reader checks."""
    target = max(path.glob("seg-*.json"), key=lambda p: p.stat().st_mtime_ns)
    h = json.loads(target.read_bytes())["doc"]
    data = path / f"{h['name']}.{h['token']}.data"
    raw = bytearray(data.read_bytes())
    raw[:4] = np.float32(1234.5).tobytes()
    data.write_bytes(bytes(raw))
    h["data_blake2b"] = blake(bytes(raw))
    target.write_bytes(checksummed(h))


def test_the_digest_is_stable_across_reopens_processes_and_uncommitted_entries(tmp_path):
    path, d = published(tmp_path)
    assert len(d) == 64 and DiskStore(path, readonly=True).digest() == d
    assert DiskStore(path, readonly=True).digest(verify=False) == d
    writer = DiskStore(path)
    writer.put_many(keys(2, start=200), [value(k) for k in keys(2, start=200)])  # buffered, not committed
    assert writer.digest() == d
    child = FORK.Pool(1)
    try:
        assert child.apply(_digest_of, (str(path),)) == d
    finally:
        child.terminate()


def _digest_of(path: str) -> str:
    return DiskStore(path, readonly=True).digest()


def test_the_digest_changes_with_any_committed_change(tmp_path):
    path, d = published(tmp_path)
    seen = {d}

    def changed() -> str:
        new = DiskStore(path, readonly=True).digest()
        assert new not in seen
        seen.add(new)
        return new

    store = DiskStore(path)
    store.put_many(keys(1, start=300), [value(keys(1, start=300)[0])])
    store.flush()
    changed()  # a new segment
    store.compact()
    changed()  # a new generation
    (path / "fingerprint.json").write_bytes(checksummed(dict(FP_B.parts)))
    changed()
    doc = json.loads((path / "store.json").read_bytes())["doc"]
    (path / "store.json").write_bytes(checksummed({**doc, "created_by": "someone else"}))
    changed()


def test_a_data_byte_changed_without_its_checksum_fails_verification_not_the_digest(tmp_path):
    """The digest covers the data through the checksums the headers hold: a byte changed alone leaves the headers,
    and so is refused when read (and by digest(), which verifies every file by default)."""
    path, d = published(tmp_path)
    h = json.loads(max(path.glob("seg-*.json"), key=lambda p: p.stat().st_mtime_ns).read_bytes())["doc"]
    data = path / f"{h['name']}.{h['token']}.data"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    data.write_bytes(bytes(raw))
    assert DiskStore(path, readonly=True).digest(verify=False) == d
    with pytest.raises(StoreCorrupted, match=f"{data.name} fails its checksum"):
        DiskStore(path, readonly=True).digest()
    pinned = DiskStore(path, readonly=True, digest=d)
    with pytest.raises(StoreCorrupted, match=data.name):
        pinned.get_many(keys(3, start=100))


@pytest.mark.parametrize("forgery", ["segment rewritten, checksums recomputed", "another model's fingerprint.json"])
def test_a_pinned_open_refuses_a_forged_store(tmp_path, forgery):
    path, d = published(tmp_path)
    pinned = DiskStore(path, readonly=True, digest=d)
    if forgery.startswith("segment"):
        forge_data(path)
        # The forgery passes every check an unpinned reader makes:
        assert float(DiskStore(path, readonly=True).get_many(keys(3, start=100))[0].flatten()[0]) == 1234.5
    else:
        other, _ = published(tmp_path, "other", FP_B)
        shutil.copy(other / "fingerprint.json", path / "fingerprint.json")
        DiskStore(path, readonly=True).bind_fingerprint(FP_B)  # unpinned, it would serve model B
    with pytest.raises(DigestMismatch, match=f"opened with digest='{d}'") as err:
        DiskStore(path, readonly=True, digest=d)
    assert isinstance(err.value, StoreCorrupted) and "Get the store again from its source" in str(err.value)
    with pytest.raises(DigestMismatch):
        pickle.loads(pickle.dumps(pinned))  # a worker that reopens the pinned store checks it again


def test_a_pinned_store_serves_what_it_was_opened_with(tmp_path):
    path, d = published(tmp_path)
    pinned = DiskStore(path, readonly=True, digest=d)
    want = pinned.get_many(keys(12))
    intruder = DiskStore(path, writer="0")  # seg-0-...: a lower name than every writer's, so its copies would win
    intruder.put_many(keys(12) + keys(1, start=400), [torch.zeros(1, 8)] * 13)
    intruder.flush()
    assert keys(1, start=400)[0] not in pinned and len(pinned) == 15
    pinned.refresh()
    assert all(torch.equal(a, b) for a, b in zip(pinned.get_many(keys(12)), want))
    assert pinned.digest() == d and pinned.fingerprint_parts == FP_A.parts
    with pytest.raises(ValueError, match="serves generation"):
        pinned.open_snapshot(DiskStore(path).compact())


def test_a_pinned_data_file_replaced_after_its_first_read_is_checked_again(tmp_path):
    """A data file is hashed once per file: reopened (past the open-file limit, or in a forked worker) it is hashed
    again unless it is the very file that was checked."""
    path, d = published(tmp_path)
    pinned = DiskStore(path, readonly=True, digest=d)
    pinned.get_many(keys(3, start=100))
    seg = pinned._view.unmerged[-1]
    seg.close_file()
    data = path / f"{seg.name}.{seg.header['token']}.data"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    replacement = data.with_name("replacement")
    replacement.write_bytes(bytes(raw))
    replacement.replace(data)
    with pytest.raises(StoreCorrupted, match=f"{data.name} fails its checksum"):
        pinned.get_many(keys(3, start=100))


def test_a_digest_argument_is_checked(tmp_path):
    path, d = published(tmp_path)
    with pytest.raises(ValueError, match="readonly=True"):
        DiskStore(path, digest=d)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        DiskStore(path, readonly=True, digest=d.upper())


def test_a_recycled_model_serves_a_pinned_store_as_the_one_it_filled(tmp_path):
    from conftest import text_examples, text_model

    examples = text_examples()
    rec = lr.recycle(text_model("bert", "ForSequenceClassification"), at=1, store=DiskStore(tmp_path / "s")).eval()
    rec.fill(examples, progress=False)
    want = rec.predict(examples, progress=False)
    d = DiskStore(tmp_path / "s", readonly=True).digest()
    pinned = DiskStore(tmp_path / "s", readonly=True, digest=d)
    served = lr.recycle(text_model("bert", "ForSequenceClassification"), at=1, store=pinned, store_misses=False).eval()
    got = served.predict(examples, progress=False)
    assert served.pipeline.stats.hits == len(examples) and served.pipeline.stats.bottom_calls == 0
    assert all(torch.allclose(g["logits"], w["logits"], atol=1e-6) for g, w in zip(got, want))
