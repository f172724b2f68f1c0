"""How DiskStore keeps states on disk: float32, float16, bfloat16 (raw bits) or int8 with a per-row scale.

Encoding and decoding run in torch (on the tensor's device); numpy only carries bytes to and from the files.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

FLOAT16_MAX = 65504.0  # the largest finite float16; beyond it float16 stores inf


@dataclasses.dataclass(frozen=True)
class Codec:
    """One storage format: the numpy dtype of its bytes and the torch dtype it decodes to by default."""

    name: str
    storage: np.dtype  # little-endian, fixed: files mean the same bytes on every machine
    decoded: torch.dtype
    scaled: bool = False  # int8 keeps one float32 scale per row (per token)


CODECS = {
    "float32": Codec("float32", np.dtype("<f4"), torch.float32),
    "float16": Codec("float16", np.dtype("<f2"), torch.float16),
    "bfloat16": Codec("bfloat16", np.dtype("<i2"), torch.bfloat16),  # numpy has no bf16: keep the raw bits
    "int8": Codec("int8", np.dtype("i1"), torch.float32, scaled=True),
}
SCALE_DTYPE = np.dtype("<f4")
LOSSLESS = ("native", "float32")  # codecs that give back exactly what was stored
_ALIASES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.int8: "int8"}


def codec_name(codec: str | torch.dtype | None) -> str | None:
    """The name of a ``codec`` argument, a name or a torch dtype (None stays None: "as stored, float32 if new").

    Raises:
        ValueError: ``codec`` names no codec.
    """
    if codec is None:
        return None
    name = _ALIASES.get(codec, codec) if isinstance(codec, torch.dtype) else str(codec).removeprefix("torch.")
    if name not in CODECS:
        raise ValueError(
            f"codec={codec!r}: expected one of {sorted(CODECS)} (or the torch dtypes float32, float16, "
            f"bfloat16, int8); float16 halves the size, int8 quarters it with a per-token scale"
        )
    return name


def encode(value: torch.Tensor, codec: Codec, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``value`` (n, *feature) as the codec's bytes (n, *feature) and, for int8, its row scales (n,).

    Raises:
        ValueError: float16 values beyond its range, or int8 values that are not finite.
    """
    x = value.detach()
    if codec.name == "float16" and x.dtype != torch.float16:  # float16 input fits as it is (and abs on it is slow)
        _check_float16_range(x, key)
    if codec.name == "int8":
        return _encode_int8(x, key)
    if codec.name == "bfloat16":
        return x.to(torch.bfloat16).view(torch.int16).cpu().numpy(), None
    return x.to(codec.decoded).cpu().numpy(), None


def decode(
    raw: np.ndarray, scales: np.ndarray | None, codec: Codec, device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """A tensor (n, *feature) of ``dtype`` on ``device`` from stored bytes; the conversion runs on ``device``."""
    values, row_scales = stored(raw, scales, codec)
    values = values.to(device)  # bytes travel in their stored (small) dtype
    row_scales = row_scales.to(device) if row_scales is not None else None
    return dequantize(values, row_scales, dtype or codec.decoded)


def stored(raw: np.ndarray, scales: np.ndarray | None, codec: Codec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stored bytes as tensors, not converted: (values in the stored dtype, row scales for int8 else None)."""
    values = torch.from_numpy(raw)
    if codec.name == "bfloat16":
        values = values.view(torch.bfloat16)
    return values, torch.from_numpy(scales) if codec.scaled else None


def dequantize(values: torch.Tensor, scales: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``values`` as ``dtype``, where they are; int8 codes times their row ``scales`` (one per leading index:
    (n,) for an entry (n, *feature), (b, t) for a padded batch (b, t, *feature))."""
    if scales is None:
        return values.to(dtype)
    scales = scales.reshape(*scales.shape, *([1] * (values.dim() - scales.dim())))
    return (values.to(torch.float32) * scales).to(dtype)


def _check_float16_range(x: torch.Tensor, key: str) -> None:
    if x.numel() and float(x.abs().max()) > FLOAT16_MAX:
        raise ValueError(
            f"entry {key!r} holds values up to {float(x.abs().max()):.4g}, beyond float16's range (+-65504): "
            f"they would be stored as inf. Open the store with codec='bfloat16' (same size, float32's range) "
            f"or codec='float32'."
        )


def _encode_int8(x: torch.Tensor, key: str) -> tuple[np.ndarray, np.ndarray]:
    x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"entry {key!r} holds inf or nan, which int8 cannot scale; use codec='float32' or 'bfloat16'")
    rows = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # (n, features): one scale per row
    scale = rows.abs().amax(dim=1) / 127.0 if rows.shape[1] else torch.zeros(x.shape[0], device=x.device)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row keeps scale 0 and q 0
    q = torch.round(rows / safe[:, None]).clamp_(-127, 127).to(torch.int8).reshape(x.shape)
    return q.cpu().numpy(), scale.cpu().numpy().astype(SCALE_DTYPE)
