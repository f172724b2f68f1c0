"""Hand-built halves of transformers vision models whose blocks read the image's size: Swin and Swinv2 (each stage
is handed the feature map's (height, width)), data2vec-vision and BEiT (their relative position bias reads the
image's height and width from ``pixel_values``). Each builder takes (model, at) and returns (bottom, top, blocks
recycled, blocks in all), as those of ``halves``."""

from __future__ import annotations

import torch
from torch import nn

from .halves import Bottom, Built, Seam, _cut_stages
from .surgery import join, replace, resolve_at, shallow

# ---- Swin, Swinv2: embeddings, encoder.layers (stages of blocks, then a patch merging), layernorm, pooler ----------


class FeatureMap(nn.Module):
    """Swin's stem and the stages below the split: pixels (b, c, H, W) -> the feature map (b, d, h, w).

    Stored as a map, the states carry their (height, width), which the top's blocks need (a feature map of an odd
    side is padded before a merge, so the token count alone does not say it)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        x, (h, w) = self.base.embeddings(pixel_values, **kwargs)  # (b, h * w, d)
        x = self.base.encoder(x, (h, w))[0]
        for stage in self.base.encoder.layers:  # as the encoder's forward follows the merges
            if stage.downsample is not None:
                h, w = (h + 1) // 2, (w + 1) // 2
        return x.transpose(1, 2).unflatten(2, (h, w))


class FromFeatureMap(nn.Module):
    """Stands in for Swin's embeddings in the top: the stored map (b, d, h, w) -> (tokens (b, h * w, d), (h, w))."""

    def forward(self, pixel_values: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = pixel_values.shape[2:]
        return pixel_values.flatten(2).transpose(1, 2), (int(h), int(w))


def swin(model: nn.Module, at: int | float) -> Built:
    """SwinModel, Swinv2Model and their classifiers: a level counts the blocks of all stages. A stage cut inside
    keeps its patch merging in the top part; each block keeps its own window shift (set by its place in its stage
    when the model was built), and the top's own forward runs the rest (norm, pooling, head)."""
    _served(model)
    base = model.base_model
    prefix = "" if base is model else model.base_model_prefix
    stages = base.encoder.layers
    k = resolve_at(at, sum(len(stage.blocks) for stage in stages))
    below, above, done = _cut_stages(stages, k, "blocks", {}, below_edits={"downsample": None})
    tail = {t: None for t in ("pooler",) if getattr(base, t, None) is not None}
    bottom = FeatureMap(replace(base, {"encoder.layers": nn.ModuleList(below), "layernorm": nn.Identity(), **tail}))
    top = replace(model, {join(prefix, "embeddings"): FromFeatureMap(),
                          join(prefix, "encoder.layers"): nn.ModuleList(above)})
    return bottom, top, k, done


# ---- data2vec-vision: embeddings, encoder.layer, layernorm, pooler; a relative position bias sized by the image ----


class ConfigSized(Bottom):
    """The bottom of a model whose top takes the image's patch grid from the config: it refuses another grid."""

    def __init__(self, base: nn.Module, grid: tuple[int, int] | None):
        super().__init__(base)
        self.grid = grid  # None: nothing above the split reads the image's size

    def forward(self, **inputs) -> torch.Tensor:
        h, w = inputs["pixel_values"].shape[-2:]
        patch = _pair(self.base.config.patch_size)
        got = (h // patch[0], w // patch[1])
        if self.grid is not None and got != self.grid:
            raise ValueError(
                f"an image of {h}x{w} pixels gives a patch grid of {got[0]}x{got[1]}; recycled, "
                f"{type(self.base).__name__} serves images of its config's grid {self.grid[0]}x{self.grid[1]} "
                f"(image_size {self.base.config.image_size}) only: the relative position bias above the split is sized "
                f"by the image, which the stored states do not carry. Resize the images to the config's image_size"
            )
        return super().forward(**inputs)


class _ConfigResolution:
    """Mixed into a copy of data2vec-vision's encoder (or of a BEiT block) in the top: it hands its blocks the
    config's image size as the ``resolution`` the model's forward reads from ``pixel_values`` (in the top, the
    stored states)."""

    resolution: tuple[int, int]

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return super().forward(hidden_states, *args, **{**kwargs, "resolution": self.resolution})


_RESOLVED: dict[type, type] = {}


def _with_config_resolution(encoder: nn.Module, resolution: tuple[int, int]) -> nn.Module:
    """``encoder`` (a shallow copy) as an instance of a subclass that passes ``resolution`` to its blocks."""
    cls = type(encoder)
    if cls not in _RESOLVED:
        _RESOLVED[cls] = type(cls.__name__, (_ConfigResolution, cls), {"__module__": cls.__module__})
    encoder.__class__ = _RESOLVED[cls]
    encoder.resolution = resolution
    return encoder


class _Entry(nn.Module):
    """Stands in for data2vec-vision's embeddings in the top: (the stored states, no patch grid), as it returns."""

    def forward(self, pixel_values: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        return pixel_values, None


def data2vec_vision(model: nn.Module, at: int | float) -> Built:
    """Data2VecVisionModel and its classifier, with or without a relative position bias (shared or per block):
    above the split the bias is sized from the config's image_size, and the bottom refuses images of another
    patch grid."""
    _served(model)
    base = model.base_model
    prefix = "" if base is model else model.base_model_prefix
    config, layers = base.config, list(base.encoder.layer)
    k = resolve_at(at, len(layers))
    size = _pair(config.image_size)
    patch = _pair(config.patch_size)
    biased = config.use_relative_position_bias or config.use_shared_relative_position_bias
    tail = {t: None for t in ("pooler",) if getattr(base, t, None) is not None}
    bottom = ConfigSized(replace(base, {"encoder.layer": nn.ModuleList(layers[:k]), "layernorm": nn.Identity(),
                                        **tail}), (size[0] // patch[0], size[1] // patch[1]) if biased else None)
    encoder = shallow(base.encoder)
    encoder.layer = nn.ModuleList(layers[k:])
    top = replace(model, {join(prefix, "embeddings"): _Entry(),
                          join(prefix, "encoder"): _with_config_resolution(encoder, size)})
    return bottom, top, k, len(layers)


def beit(model: nn.Module, at: int | float) -> Built:
    """BeitModel and its classifier, with or without a relative position bias in each block: above the split
    each block gets the config's image size, as in ``data2vec_vision``. A bias shared by all blocks is computed
    in the base model's forward from ``pixel_values``, which the top does not have: refused."""
    _served(model)
    base = model.base_model
    prefix = "" if base is model else model.base_model_prefix
    config, layers = base.config, list(base.layers)
    if config.use_shared_relative_position_bias:
        raise ValueError(
            f"{type(model).__name__} with use_shared_relative_position_bias=True is refused: its forward sizes the "
            f"bias all blocks share from pixel_values, which a top fed stored states does not have. BEiT with a "
            f"bias in each block (use_relative_position_bias=True, as its fine-tuned checkpoints) is served")
    k = resolve_at(at, len(layers))
    size, patch = _pair(config.image_size), _pair(config.patch_size)
    tail = {t: None for t in ("pooler",) if getattr(base, t, None) is not None}
    grid = (size[0] // patch[0], size[1] // patch[1]) if config.use_relative_position_bias else None
    bottom = ConfigSized(replace(base, {"layers": nn.ModuleList(layers[:k]), "layernorm": nn.Identity(), **tail}), grid)
    above = [_with_config_resolution(shallow(layer), size) for layer in layers[k:]]
    top = replace(model, {join(prefix, "embeddings"): Seam(base.embeddings, "pixel_values"),
                          join(prefix, "layers"): nn.ModuleList(above)})
    return bottom, top, k, len(layers)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)[-2:]


def _served(model: nn.Module) -> None:
    """Refuse the heads these halves are not proven on: a backbone or a segmentation head reads the states of
    several stages or blocks, a masked-image head compares its output with ``pixel_values`` (stored states here)."""
    name = type(model).__name__
    if not name.endswith(("Model", "ForImageClassification")) or name.endswith("PreTrainedModel"):
        base = name.partition("For")[0].removesuffix("Backbone")
        raise ValueError(
            f"{name} is refused: it reads more than the last block's states (several stages' or blocks' states, or "
            f"the input pixels for its loss), which a top fed stored states does not have. Recycle {base}Model or "
            f"{base}ForImageClassification, whose splits the tests prove"
        )
