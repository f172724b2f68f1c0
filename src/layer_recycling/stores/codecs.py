"""How stores keep states: float32, float16, bfloat16 (raw bits), or int8 codes with a per-row side record that
holds the row's scale and its largest values exactly. Each codec states a bound on its error per value
(``error_bound``), and ``check_error`` measures a round trip against it.

Encoding and decoding run in torch (on the tensor's device); numpy only carries bytes to and from the files.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
import torch

from .files import StoreCorrupted

FLOAT16_MAX = 65504.0  # the largest finite float16; beyond it float16 stores inf
OUTLIERS = 4  # values of each row that int8 keeps exactly (value and column) beside the codes
SCALE_DTYPE = np.dtype("<f4")  # the side record's floats
_WIDEST = 1 << 24  # columns are kept as float32: exact integers up to 2**24


@dataclasses.dataclass(frozen=True)
class Codec:
    """One storage format: the numpy dtype of its bytes, the torch dtype it decodes to by default, the float32
    side values it keeps per row (int8: the scale, then ``outliers`` exact values, then their columns), and the
    bound on its error per value: ``relative * |x| + absolute`` for the float codecs (rounding to nearest,
    subnormals included); for int8 half a step, the step set by the row's values it does not keep exactly."""

    name: str
    storage: np.dtype  # little-endian, fixed: files mean the same bytes on every machine
    decoded: torch.dtype
    side: int = 0  # float32 values per row beside the codes (0: none)
    outliers: int = 0  # values per row kept exactly in the side record
    relative: float = 0.0
    absolute: float = 0.0
    writable: bool = True  # False: an earlier format, read but never written

    @property
    def scaled(self) -> bool:
        return self.side > 0

    def side_array(self, rows: int) -> np.ndarray | None:
        """An empty side array for ``rows`` rows (None for codecs without one)."""
        return np.empty((rows, self.side), SCALE_DTYPE) if self.side else None

    @property
    def side_bytes(self) -> int:
        """Bytes per row beside the codes."""
        return self.side * SCALE_DTYPE.itemsize

    @property
    def bound_text(self) -> str:
        if self.side:
            kept = f"; its {self.outliers} largest values kept exactly" if self.outliers else ""
            return f"|x - x'| <= m / 254, m the largest magnitude of the row not kept exactly{kept}"
        return f"|x - x'| <= {self.relative:.3g} * |x| + {self.absolute:.3g}"


CODECS = {
    "float32": Codec("float32", np.dtype("<f4"), torch.float32, relative=2.0**-24, absolute=2.0**-150),
    "float16": Codec("float16", np.dtype("<f2"), torch.float16, relative=2.0**-11, absolute=2.0**-25),
    # numpy has no bfloat16: keep the raw bits
    "bfloat16": Codec("bfloat16", np.dtype("<i2"), torch.bfloat16, relative=2.0**-8, absolute=2.0**-134),
    "int8-outliers": Codec("int8-outliers", np.dtype("i1"), torch.float32, side=1 + 2 * OUTLIERS, outliers=OUTLIERS),
    # The int8 of stores made before the outliers were kept: one scale per row, so a row with one large value
    # loses the others. Read as written (its bound is half its row's step), never written again.
    "int8": Codec("int8", np.dtype("i1"), torch.float32, side=1, writable=False),
}
NAMES = ("bfloat16", "float16", "float32", "int8")  # what a new store is asked for by
LOSSLESS = ("native", "float32")  # codecs that give back exactly what was stored
_ALIASES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.int8: "int8"}
_NEW = {"int8": "int8-outliers"}  # what a name asks for in a new store


def codec_name(codec: str | torch.dtype | None) -> str | None:
    """The stored name of a ``codec`` argument, a name or a torch dtype (None stays None: "as stored, float32 if
    new"); ``"int8"`` names the int8 that keeps each row's outliers, stored as ``"int8-outliers"``.

    Raises:
        ValueError: ``codec`` names no codec.
    """
    if codec is None:
        return None
    name = _ALIASES.get(codec, codec) if isinstance(codec, torch.dtype) else str(codec).removeprefix("torch.")
    name = _NEW.get(name, name)
    if name not in CODECS:
        raise ValueError(
            f"codec={codec!r}: expected one of {list(NAMES)} (or the torch dtypes); "
            f"float16 halves the size, int8 quarters it (a scale and the {OUTLIERS} largest values of each row kept "
            f"apart)"
        )
    return name


def describe(name: str) -> str:
    """A stored codec name in words, for errors."""
    if not CODECS[name].writable:
        return f"{name!r} (the earlier int8: one scale per row; readable, never written again)"
    return repr(name)


def encode(value: torch.Tensor, codec: Codec, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``value`` (n, *feature) as the codec's bytes (n, *feature) and, for int8, its side records (n, side).

    Raises:
        ValueError: float16 values beyond its range, int8 values that are not finite, or a codec only read.
    """
    x = value.detach()
    if not codec.writable:
        raise ValueError(
            f"this store's codec is {describe(codec.name)}: it loses a row's small values beside a large one, so "
            f"nothing more is written in it. Fill a new store with codec='int8' (keeps each row's {OUTLIERS} largest "
            f"values exactly), 'bfloat16' or 'float32'"
        )
    if codec.name == "float16":
        check_float16_range(x, key)
    if codec.scaled:
        return _encode_int8(x, codec, key)
    if codec.name == "bfloat16":
        return x.to(torch.bfloat16).view(torch.int16).cpu().numpy(), None
    return x.to(codec.decoded).cpu().numpy(), None


def decode(
    raw: np.ndarray, side: np.ndarray | None, codec: Codec, device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """A tensor (n, *feature) of ``dtype`` on ``device`` from stored bytes; the conversion runs on ``device``."""
    values, sides = stored(raw, side, codec)
    values = values.to(device)  # bytes travel in their stored (small) dtype
    sides = sides.to(device) if sides is not None else None
    return dequantize(values, sides, dtype or codec.decoded)


def stored(raw: np.ndarray, side: np.ndarray | None, codec: Codec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stored bytes as tensors, not converted: (values in the stored dtype, int8's side records (n, side) float32
    or None). The columns of kept values are checked here, on the host: a device would fault on a bad one.

    Raises:
        StoreCorrupted: a kept value's column is outside its row.
    """
    values = torch.from_numpy(raw)
    if codec.name == "bfloat16":
        values = values.view(torch.bfloat16)
    if not codec.scaled:
        return values, None
    sides = torch.from_numpy(side).reshape(len(side), codec.side)
    cols = sides[:, 1 + codec.outliers :]
    width = math.prod(raw.shape[1:])
    if cols.numel() and not bool(((cols >= 0) & (cols < max(width, 1)) & (cols == cols.round())).all()):
        raise StoreCorrupted(f"int8 side records name columns outside rows of {width} values: the data was altered")
    return values, sides


def dequantize(values: torch.Tensor, side: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``values`` as ``dtype``, where they are. int8: codes times their row's scale, then the row's kept values
    written at their columns. ``side`` holds one record per leading index: (n, side) for an entry
    (n, *feature), (b, t, side) for a padded batch (b, t, *feature) (padding records are zeros)."""
    if side is None:
        return values.to(dtype)
    lead = side.shape[:-1]
    rows = values.reshape(lead.numel(), math.prod(values.shape[len(lead):])).to(torch.float32)  # (rows, width)
    records = side.reshape(lead.numel(), side.shape[-1])
    out = rows * records[:, :1]
    kept = (side.shape[-1] - 1) // 2
    if kept and rows.shape[1]:
        out.scatter_(1, records[:, 1 + kept :].long(), records[:, 1 : 1 + kept])
    return out.reshape(values.shape).to(dtype)


def check_float16_range(x: torch.Tensor, key: str) -> None:
    """Refuse finite values beyond float16's range: they would be stored as inf (float16 input fits as it is,
    and abs on it is slow)."""
    if not x.numel() or x.dtype == torch.float16:
        return
    top = float(torch.where(torch.isinf(x), 0.0, x.abs()).max())  # inf stays inf (allowed or refused by the fill)
    if top > FLOAT16_MAX:
        raise ValueError(
            f"entry {key!r} holds values up to {top:.4g}, beyond float16's range (+-65504): "
            f"they would be stored as inf. Use codec='bfloat16' (same size, float32's range) or codec='float32' "
            f"(a MemoryStore: also codec=None)."
        )


def _encode_int8(x: torch.Tensor, codec: Codec, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Codes (n, *feature) and side records (n, 1 + 2k): per row its scale, its k largest values and their columns.

    The scale is the largest magnitude left after the kept values, over 127: a row's one huge value no longer
    sets the step of the others. Fewer than k values in a row: the first kept one fills the rest of the slots.
    """
    x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"entry {key!r} holds inf or nan, which int8 cannot scale; use codec='float32' or 'bfloat16'")
    n, width = x.shape[0], math.prod(x.shape[1:])
    if width > _WIDEST:
        raise ValueError(f"entry {key!r} has rows of {width} values; int8 keeps columns up to {_WIDEST}: use "
                         f"codec='bfloat16' or 'float32'")
    rows = x.reshape(n, width)
    k = min(codec.outliers, width)
    cols = rows.abs().topk(k, dim=1).indices if k else torch.zeros(n, 0, dtype=torch.long, device=x.device)
    kept = rows.gather(1, cols)
    rest = rows.scatter(1, cols, 0.0) if k else rows
    scale = rest.abs().amax(dim=1) / 127.0 if width else torch.zeros(n, device=x.device)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row keeps scale 0 and q 0
    q = torch.round(rest / safe[:, None]).clamp_(-127, 127).to(torch.int8).reshape(x.shape)
    side = torch.zeros(n, codec.side, device=x.device)
    side[:, 0] = scale
    if codec.outliers and k:
        fill = codec.outliers - k  # rows narrower than the slots repeat their first kept value
        side[:, 1 : 1 + codec.outliers] = torch.cat([kept, kept[:, :1].expand(n, fill)], dim=1)
        side[:, 1 + codec.outliers :] = torch.cat([cols, cols[:, :1].expand(n, fill)], dim=1).float()
    return q.cpu().numpy(), side.cpu().numpy()


def error_bound(x: torch.Tensor, codec: Codec) -> torch.Tensor:
    """The stated bound on ``|x - decode(encode(x))|`` for each value of ``x`` (n, *feature), float32, shaped as
    ``x``. Float codecs: ``relative * |x| + absolute``. int8: ``m_i / 254`` on every value of row i, ``m_i`` the
    largest magnitude of the row after its ``outliers`` largest (which are exact), with 2**-14 of it for float32
    rounding of the division and the product."""
    a = x.detach().float().abs()
    if not codec.scaled:
        return a * (codec.relative * (1 + 2.0**-10)) + codec.absolute
    rows = a.reshape(x.shape[0], math.prod(x.shape[1:]))
    if rows.shape[1] <= codec.outliers:
        m = torch.zeros(rows.shape[0], device=a.device)
    else:
        m = rows.topk(codec.outliers + 1, dim=1).values[:, -1]
    return (m / 254.0 * (1 + 2.0**-14)).reshape(-1, *([1] * (x.dim() - 1))).expand(x.shape)


def check_error(states: Sequence[torch.Tensor], codec: Codec, name_of: Callable[[int], str]) -> float:
    """Encode and decode ``states`` (each (n_i, *feature), one shape after dim 0) and refuse an error beyond the
    codec's stated bound on any value; returns the largest error found. Values that are not finite are left
    out (whether they may be stored is the fill's to say).

    Raises:
        ValueError: a value's error exceeds the bound: the error, the bound, the example ``name_of(i)``, where.
    """
    if not states:
        return 0.0
    joined = torch.cat([s.detach() for s in states])
    x = joined.float()
    raw, side = encode(joined, codec, name_of(0) if len(states) == 1 else "")
    got = decode(raw, side, codec, x.device, torch.float32)
    finite = torch.isfinite(x)
    error = torch.where(finite, (got - x).abs(), 0.0)
    excess = torch.where(finite, error - error_bound(x, codec), 0.0)
    if not excess.numel() or float(excess.max()) <= 0:
        return float(error.max()) if error.numel() else 0.0
    at = int(excess.reshape(-1).argmax())
    row, col = divmod(at, max(1, math.prod(x.shape[1:])))
    ends = np.cumsum([s.shape[0] for s in states])
    i = int(np.searchsorted(ends, row, side="right"))
    flat_x, flat_got = x.reshape(-1), got.reshape(-1)
    raise ValueError(
        f"codec {codec.name!r} exceeds its stated error bound ({codec.bound_text}): {name_of(i)} has row "
        f"{row - (ends[i - 1] if i else 0)}, value {col} = {float(flat_x[at]):.6g} stored as "
        f"{float(flat_got[at]):.6g}, "
        f"an error of {float(error.reshape(-1)[at]):.4g} where the bound is "
        f"{float(error_bound(x, codec).reshape(-1)[at]):.4g} (largest error in this batch {float(error.max()):.4g}). "
        f"Nothing of this batch was stored. Use codec='float32' (exact) or 'bfloat16', and report it: a codec "
        f"should meet its bound"
    )
