"""Format-1 stores (manifest.json + shard-*.bin): refused with the way to convert them, and converted."""

from __future__ import annotations

import pytest
import torch

import layer_recycling as lr
from layer_recycling.cli import main
from layer_recycling.stores import legacy
from layer_recycling.stores.codecs import CODECS, encode
from layer_recycling.stores.disk import DiskStore, StoreCorrupted, convert
from store_helpers import assert_close, keys, store_files, value


def old_store(path, codec: str = "float16", n: int = 12, per_shard: int = 5, fingerprint=None):
    """A format-1 store written by the old writer code."""
    path.mkdir(parents=True)
    manifest = legacy.new_manifest(codec, created_by="layer_recycling 0.1.0")
    manifest["fingerprint"] = fingerprint
    names = keys(n)
    for i in range(0, n, per_shard):
        batch = {k: encode(value(k), CODECS[codec], k) for k in names[i : i + per_shard]}
        manifest["shards"].append(legacy.write_shard(path, codec, batch))
        manifest["feature_shape"] = [8]
    legacy.atomic_write(path / legacy.MANIFEST, [legacy.manifest_bytes(manifest)])
    return names


@pytest.mark.parametrize("codec", ["float16", "int8"])
def test_an_old_store_is_refused_then_converted_in_place(tmp_path, codec, capsys):
    path = tmp_path / "old"
    names = old_store(path, codec, fingerprint={"weights": "aa"})
    for readonly in (False, True):
        with pytest.raises(ValueError, match=r"format 1.*recycle convert.*lr.stores.disk.convert"):
            DiskStore(path, readonly=readonly)
    assert main(["inspect", str(path)]) != 0
    assert "format 1" in capsys.readouterr().err  # inspect explains an old store and how to convert it
    convert(path)
    store = DiskStore(path, readonly=True)
    assert list(store) == sorted(names) and store.codec == codec and store.fingerprint_parts == {"weights": "aa"}
    for got, k in zip(store.get_many(names), names):
        assert_close(codec, got, value(k))
    assert not [n for n in store_files(path) if n.startswith("shard-") or n == "manifest.json"]
    assert main(["inspect", str(path)]) == 0 and '"format": 2' in capsys.readouterr().out


def test_recycle_convert_in_place_or_to_a_copy(tmp_path, capsys):
    names = old_store(tmp_path / "old", "float16")
    assert main(["convert", str(tmp_path / "old"), "--to", str(tmp_path / "new")]) == 0
    assert "12 entries" in capsys.readouterr().out
    assert (tmp_path / "old" / "manifest.json").exists()  # --to keeps the old store
    assert main(["convert", str(tmp_path / "old")]) == 0
    for path in ("old", "new"):
        store = DiskStore(tmp_path / path, readonly=True)
        assert list(store) == sorted(names)
        new = DiskStore(tmp_path / "new").get_many(names)
        assert all(torch.equal(a, b) for a, b in zip(store.get_many(names), new))
    assert main(["convert", str(tmp_path / "old")]) == 2
    assert "already a store of the current format" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "nothing")]) == 2
    assert "no format-1 store" in capsys.readouterr().err


def test_conversion_to_a_new_path_keeps_the_old_store_and_int8_bytes(tmp_path):
    path = tmp_path / "old"
    names = old_store(path, "int8")
    manifest = legacy.parse_manifest((path / legacy.MANIFEST).read_bytes(), path / legacy.MANIFEST)
    before = {}
    for rec in manifest["shards"]:
        shard = legacy.read_header(path, rec, manifest)
        data, scales = legacy.map_shard(path, shard, manifest, verify=True)
        for k, o, n in zip(shard.keys, shard.offsets, shard.lengths):
            before[k] = (data[o : o + n].tobytes(), scales[o : o + n].tobytes())
    convert(path, dest=tmp_path / "new")
    assert (path / legacy.MANIFEST).exists()  # the old store is untouched
    new = DiskStore(tmp_path / "new", readonly=True)
    found, segs, spans = new._locate(names)
    assert found.all()
    for k, seg, (o, n) in zip(names, segs, spans):
        data, scales = seg.data()
        assert (data[o : o + n].tobytes(), scales[o : o + n].tobytes()) == before[k]  # bytes copied, not re-rounded


def test_a_damaged_old_store_is_not_converted(tmp_path):
    path = tmp_path / "old"
    old_store(path)
    shard = next(path.glob("shard-*.bin"))
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 1
    shard.write_bytes(bytes(raw))
    with pytest.raises(StoreCorrupted):
        convert(path)
    assert (path / legacy.MANIFEST).exists() and not (path / "store.json").exists()


def test_an_old_store_with_keys_that_are_not_digests_is_refused(tmp_path):
    path = tmp_path / "old"
    path.mkdir()
    manifest = legacy.new_manifest("float32", created_by="x")
    manifest["shards"].append(legacy.write_shard(path, "float32", {"k1": (torch.ones(1, 2).numpy(), None)}))
    manifest["feature_shape"] = [2]
    legacy.atomic_write(path / legacy.MANIFEST, [legacy.manifest_bytes(manifest)])
    with pytest.raises(ValueError, match="lr.digest"):
        convert(path)
    assert lr.stores.disk.convert is convert
    assert [p.name for p in tmp_path.iterdir()] == ["old"]  # the half-built copy was removed
