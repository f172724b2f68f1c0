"""codecs.py: each codec meets its stated error bound per value; int8 keeps a row's outliers exactly, so a token's
massive activation no longer zeroes its other features; a store of the earlier int8 is read as written."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import layer_recycling as lr
from layer_recycling.batches import collate_states
from layer_recycling.stores.codecs import (
    CODECS, OUTLIERS, check_error, codec_name, decode, dequantize, encode, error_bound, stored,
)
from layer_recycling.stores.disk import DiskStore
from layer_recycling.stores.segments import write_segment
from layer_recycling.stores.store_files import create

INT8 = CODECS["int8-outliers"]
OLD_INT8 = CODECS["int8"]


def decoder_like(n: int = 12, hidden: int = 64, seed: int = 0) -> torch.Tensor:
    """States shaped as a decoder's residual stream: Gaussian features, two outlier channels on every token
    (LLM.int8's outlier features, ~20x), and massive activations on the first token (~1000x the median)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, hidden, generator=g)
    x[:, 3] += 20.0
    x[:, 41] -= 25.0
    x[0, 17], x[0, 29] = 1500.0, -800.0  # the first token's massive activations
    return x


def round_trip(x: torch.Tensor, codec=INT8) -> torch.Tensor:
    return decode(*encode(x, codec, "k"), codec, None, torch.float32)


@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16", "int8-outliers"])
def test_every_value_is_within_its_codecs_stated_bound(name):
    codec = CODECS[name]
    for x in (decoder_like(), torch.randn(5, 3, 4, 2) * 1e-6, torch.randn(7, 33) * 1e4):  # subnormal fp16 too
        err = (round_trip(x, codec) - x).abs()
        assert (err <= error_bound(x, codec)).all()
        assert check_error([x[:4], x[4:]], codec, ["a", "b"].__getitem__) == float(err.max())


def test_int8_keeps_outliers_exactly_and_the_others_to_a_step_set_without_them():
    x = decoder_like()
    got = round_trip(x)
    assert got[0, 17] == 1500.0 and got[0, 29] == -800.0 and torch.equal(got[:, 41], x[:, 41])
    rest = x.clone()
    rest[:, [3, 41]] = 0
    rest[0, [17, 29]] = 0
    half_step = rest.abs().amax(dim=1, keepdim=True) / 254  # the bound: set by the values not kept
    assert ((got - x).abs() <= half_step * (1 + 2**-14)).all()
    assert float((got - x).abs().max()) < 0.02  # the features beside 1500.0 are kept to 1/254 of ~3
    old = round_trip(x, dataclasses.replace(OLD_INT8, writable=True))
    assert float((old[0] - x[0]).abs().max()) > 1.0  # one scale per row: token 0's features went to 0 or +-11.8


def test_rows_without_outliers_cost_a_side_record_of_nine_floats():
    x = torch.randn(10, 384)
    codes, side = encode(x, INT8, "k")
    assert codes.dtype == np.int8 and codes.nbytes == 10 * 384 and side.shape == (10, 1 + 2 * OUTLIERS)
    assert side.nbytes == 10 * 36  # d + 36 bytes per token (the earlier int8: d + 4)


@pytest.mark.parametrize("shape", [(0, 8), (3, 0), (4, 2), (2, 3, 4), (5,)], ids=["no-rows", "no-columns",
                                                                                   "narrower-than-kept", "maps", "1d"])
def test_empty_narrow_and_many_dimensional_entries(shape):
    x = torch.randn(*shape)
    got = round_trip(x)
    assert got.shape == x.shape and (got - x).abs().le(error_bound(x, INT8)).all()
    if x.numel() and x[0].numel() <= OUTLIERS:  # every value of a row this narrow is kept exactly
        assert torch.equal(got, x)


def test_all_zero_rows_decode_to_zero_and_non_finite_values_are_refused():
    x = torch.zeros(3, 16)
    x[1, 5] = 2.5
    codes, side = encode(x, INT8, "k")
    assert side[0, 0] == 0 and torch.equal(round_trip(x), x)
    with pytest.raises(ValueError, match="inf or nan.*float32"):
        encode(torch.tensor([[1.0, float("nan")]]), INT8, "k")


def test_a_padded_batch_converts_as_each_entry_does():
    """The loader's path: stored bytes collated and padded, converted in one call, equal entry by entry."""
    entries = [decoder_like(n, seed=n) for n in (5, 2, 7)]
    kept = [stored(*encode(e, INT8, "k"), INT8) for e in entries]
    batch = collate_states(kept, ragged=True)
    assert batch["states"].dtype == torch.int8 and batch["state_scales"].shape == (3, 7, 9)
    out = dequantize(batch["states"], batch["state_scales"], torch.float32)
    for i, (values, side) in enumerate(kept):
        n = values.shape[0]
        assert torch.equal(out[i, :n], dequantize(values, side, torch.float32))
        assert not out[i, n:].any()  # padding stays 0


def test_side_records_naming_columns_outside_the_row_are_refused_on_the_host():
    codes, side = encode(decoder_like(), INT8, "k")
    side[2, 1 + OUTLIERS] = 64.0  # a column one past the row
    with pytest.raises(lr.StoreCorrupted, match="columns outside rows of 64"):
        stored(codes, side, INT8)


def test_int8_is_asked_for_by_name_or_dtype_and_stored_under_its_own_name():
    assert codec_name("int8") == codec_name(torch.int8) == codec_name("int8-outliers") == "int8-outliers"
    assert lr.MemoryStore(codec="int8").codec == "int8-outliers"


def old_int8_store(path) -> tuple[list[str], list[torch.Tensor]]:
    """A store as the earlier int8 wrote it (format 2, codec "int8": codes, then one float32 scale per row), and
    the values that codec decoded them to."""
    create(path, "int8", readonly=False)
    rows = [torch.tensor([[1000.0, 1.0, -0.5], [0.25, 0.0, 0.125]]), torch.zeros(0, 3), torch.tensor([[2.0, 4.0, 8.0]])]
    scales = [r.abs().amax(dim=1) / 127 for r in rows]
    codes = [torch.round(r / torch.where(s > 0, s, 1)[:, None]).to(torch.int8) for r, s in zip(rows, scales)]
    keys = [lr.digest(i) for i in range(3)]
    from layer_recycling.stores.binkeys import key_bytes

    write_segment(path, "seg-old-000000", "0123456789ab", "int8", [3], key_bytes(keys), [c.numpy() for c in codes],
                  np.array([2, 0, 1]), [s.numpy().astype("<f4") for s in scales])
    return keys, [c.float() * s[:, None] for c, s in zip(codes, scales)]


def test_a_store_of_the_earlier_int8_is_read_as_written_and_never_written(tmp_path):
    keys, decoded = old_int8_store(tmp_path / "s")
    store = DiskStore(tmp_path / "s")
    assert store.codec == "int8"
    for got, want in zip(store.get_many(keys), decoded):
        assert torch.equal(got, want)
    (values, side), = store.get_stored(keys[:1])
    assert values.dtype == torch.int8 and side.shape == (2, 1)
    assert torch.equal(dequantize(values, side, torch.float32), decoded[0])
    with pytest.raises(ValueError, match="earlier int8.*never written.*codec='int8'"):
        store.put_many([lr.digest("new")], [torch.ones(1, 3)])
    with pytest.raises(ValueError, match="holds a 'int8' \\(the earlier int8.*codec=None"):
        DiskStore(tmp_path / "s", codec="int8")


def test_float_codecs_keep_inf_and_nan_as_they_are_and_measure_only_finite_values():
    """Whether they may be stored is the fill's to say (allow_nonfinite); the codecs keep them, float16 too."""
    x = torch.tensor([[float("inf"), 1.0], [float("nan"), -3.0]])
    for name in ("float32", "float16", "bfloat16"):
        got = round_trip(x, CODECS[name])
        assert got[0, 0] == float("inf") and got[1, 0].isnan() and got[1, 1] == -3.0
        assert check_error([x], CODECS[name], str) == 0.0
    with pytest.raises(ValueError, match="up to 7e\\+04, beyond float16's range"):
        encode(torch.tensor([[float("inf"), 70000.0]]), CODECS["float16"], "k")
