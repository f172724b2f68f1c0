"""The on-disk format (DiskStore, format 2) read back from files an earlier version wrote (``fixtures/format2``,
made by ``fixtures/make_format2.py``): a change of the format, a codec's layout or the digest breaks this test
instead of leaving users' stores unreadable."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import layer_recycling as lr

FIXTURES = Path(__file__).parent / "fixtures" / "format2"
# int8 keeps each row's 4 largest magnitudes; the fifth, m, sets the step m / 127: 0.5, 0.125, 0.25 here, of which
# the other values are multiples (and every value has at most 8 significant bits: bfloat16 keeps it too).
ROWS = [[200.0, -150.0, 90.0, 70.0, 63.5, -0.5, 12.0, -31.5],
        [-0.5, 0.25, 15.875, 20.0, 40.0, -80.0, 160.0, 0.0],
        [1.5, -2.5, 31.75, 100.0, -400.0, 0.5, 70.0, -60.0]]
KEYS = [lr.digest(f"fixture {i}") for i in range(4)]
VALUES = [torch.tensor(ROWS[:2]), torch.zeros(0, 8), torch.tensor(ROWS[2:]), -torch.tensor(ROWS[::-1])]
FINGERPRINT = {"model": "fixture", "split": "2 of 4 blocks"}
DIGESTS = {  # store.digest() of each fixture store when it was written
    "float32": "3ba70a58e412364bb412c62326f93282e18b2db9412260a81f9dd547b5210333",
    "float16": "dbcdb0da117b63ccb09a162496c3c25f0da369b6f15c14bf4352206b7409fc43",
    "bfloat16": "463c4d6d2daaf07e33f4f0189a3d0b16260886ce387f693eef8b818ff58a697f",
    "int8-outliers": "45816979c4a07108ad240f788d6d03a93b0969da5f9694f72e0665b3bbeced87",
    "int8": "4ef0c173fa8bdb2f40857da3616d5592f2a9608d367d113fb81ce5c72e3bcf38",
}


def opened(tmp_path: Path, codec: str) -> lr.DiskStore:
    """The fixture store, copied (a test never touches the committed files) and opened pinned to its digest."""
    shutil.copytree(FIXTURES / codec, tmp_path / codec)
    return lr.DiskStore(tmp_path / codec, readonly=True, digest=DIGESTS[codec])


@pytest.mark.parametrize("codec", ["float32", "float16", "bfloat16", "int8-outliers"])
def test_a_store_an_earlier_version_wrote_reads_back_its_values_exactly(tmp_path, codec):
    store = opened(tmp_path, codec)
    assert store.codec == codec and sorted(store) == sorted(KEYS) and store.info()["feature_shape"] == [8]
    for got, want in zip(store.get_many(KEYS, dtype=torch.float32), VALUES):
        assert got.dtype == torch.float32 and torch.equal(got, want)  # every codec holds these values exactly
    assert store.checks_many(KEYS) == [None, lr.digest("inputs of 1"), None, None]
    assert store.fingerprint_parts == FINGERPRINT
    assert store.digest() == DIGESTS[codec]  # every file checked against its header's checksum


def test_the_float32_store_has_a_merged_generation_and_a_segment_beside_it(tmp_path):
    info = opened(tmp_path, "float32").info()
    assert info["snapshot"] == "g000001-1c401a19" and info["unmerged"] == 1 and info["entries"] == 4


@pytest.mark.parametrize("codec, dtype", [("float32", np.float32), ("float16", np.float16)])
def test_the_data_file_holds_the_rows_in_the_codecs_dtype_one_after_another(codec, dtype):
    """The layout itself, read without the library: the first segment's rows, little-endian, ragged."""
    data = next((FIXTURES / codec).glob("seg-fixture-000000.*.data")).read_bytes()
    rows = np.array(ROWS, np.dtype(dtype).newbyteorder("<")).tobytes()
    assert data[: len(rows)] == rows


def test_the_earlier_int8_reads_as_it_decoded(tmp_path):
    """One float32 scale per row (its largest magnitude / 127): the row's outlier sets every value's step."""
    store = opened(tmp_path, "int8")
    assert store.codec == "int8" and sorted(store) == sorted(KEYS[:3])
    for got, want in zip(store.get_many(KEYS[:3], dtype=torch.float32), VALUES[:3]):
        scale = want.abs().amax(dim=1, keepdim=True) / 127
        assert torch.equal(got, torch.round(want / scale) * scale)
