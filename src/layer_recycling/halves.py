"""The modules a split is assembled from, and the halves built by hand for models whose forward() does work
outside their modules.

``Bottom``, ``Top``, ``Seam`` and ``Zeros`` are what every split puts in place of the model's own modules. A ViT
concatenates its class token and adds its position embedding in forward(), so no list of modules run in order
reproduces it; a ConvNeXt keeps its blocks inside stages that begin with a downsampling layer. Each builder takes
(model, at) and returns (bottom, top, blocks recycled, blocks in all) over shallow copies of the model: the bottom
holds only the stem and the first k blocks, the top only what runs above them, so that freezing and fingerprinting
the bottom never touch the top (and the top shares no parameter with the bottom)."""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

from .surgery import join, replace, resolve_at, shallow


class Steps(nn.Module):
    """One half of a model: ``fn(model, x)`` on a shallow copy of the model cut at the split."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, x)


class Seam(nn.Module):
    """Stands in for a stem module in the top: returns the states passed in the ``entry`` argument."""

    def __init__(self, replaced: nn.Module, entry: str, keep: tuple[str, ...] = ()):
        super().__init__()
        self.entry = entry
        self._signature = inspect.signature(replaced.forward)
        for name in keep:  # read (not run) by the base forward, e.g. ViT's dtype check
            setattr(self, name, getattr(replaced, name))

    def forward(self, *args, **kwargs) -> torch.Tensor:
        arguments = self._signature.bind_partial(*args, **kwargs).arguments
        if self.entry not in self._signature.parameters:  # a stem called on the input alone: conv_stem(pixels)
            return next(iter(arguments.values()))
        return arguments[self.entry]


class Zeros(nn.Module):
    """Stands in for an additive embedding (GPT-2's and OPT's learned positions) in the top: the states already
    hold it."""

    def __init__(self, replaced: nn.Embedding):
        super().__init__()
        self.dim, self.dtype = replaced.embedding_dim, replaced.weight.dtype

    def forward(self, ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # (b, t) ids or mask -> (b, t, dim) zeros; OPT passes its mask and the cache length
        return torch.zeros(*ids.shape, self.dim, dtype=self.dtype, device=ids.device)


class Bottom(nn.Module):
    """Stem plus the first k blocks of a transformers base model: inputs -> states (b, t, h)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        accepts = inspect.signature(base.forward).parameters
        self._extra = {"use_cache": False} if "use_cache" in accepts else {}

    def forward(self, **inputs) -> torch.Tensor:
        return self.base(**inputs, **self._extra)[0]


class Top(nn.Module):
    """The model above block k, fed states: (states (b, t, h), attention_mask (b, t)) -> the model's output."""

    def __init__(self, model: nn.Module, entry: str | None):
        super().__init__()
        self.model, self.entry = model, entry
        params = inspect.signature(model.forward).parameters
        self.accepts = frozenset(params)
        self.takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in params.values())

    def forward(self, states: torch.Tensor, **kwargs):
        if "use_cache" in self.accepts:  # a cache of the top's blocks alone serves no later call
            kwargs.setdefault("use_cache", False)
        if self.entry is None:
            return self.model(states, **kwargs)
        return self.model(**{self.entry: states}, **kwargs)


def _cut(model: nn.Module, blocks: str, k: int, drop: tuple[str, ...], unset: tuple[str, ...], bottom: bool):
    """A shallow copy of ``model`` with the blocks before (bottom) or from (top) ``k``, ``drop`` modules blanked
    and the parameters at the dotted paths ``unset`` removed (that half never reads them)."""
    layers = model.get_submodule(blocks)
    kept = nn.Sequential(*(list(layers)[:k] if bottom else list(layers)[k:]))
    edits = {blocks: kept, **{p: nn.Identity() for p in drop}}
    owners = {p.rpartition(".")[0] for p in unset} - {""}  # replace() always copies the root
    on_path = lambda o: any(e == o or e.startswith(o + ".") for e in edits)  # noqa: E731 - copied by replace()
    copy = replace(model, {**{o: shallow(model.get_submodule(o)) for o in owners if not on_path(o)}, **edits})
    for path in unset:
        owner, _, name = path.rpartition(".")
        (copy.get_submodule(owner) if owner else copy)._parameters.pop(name, None)
    return copy


def _after(model: nn.Module, name: str) -> tuple[str, ...]:
    names = list(model._modules)
    return tuple(n for n in names[names.index(name) + 1 :] if model._modules[n] is not None)


def _before(model: nn.Module, name: str) -> tuple[str, ...]:
    names = list(model._modules)
    return tuple(n for n in names[: names.index(name)] if model._modules[n] is not None)


# ---- timm.models.vision_transformer.VisionTransformer: forward_features, then forward_head ------------------------

_TIMM_STEM_PARAMS = ("cls_token", "reg_token", "pos_embed")


Built = tuple[nn.Module, nn.Module, int, int]  # bottom, top (a Top when fed by keyword), blocks recycled, in all


def timm_vit(model: nn.Module, at: int | float) -> Built:
    k = resolve_at(at, len(model.blocks))
    bottom = _cut(model, "blocks", k, _after(model, "blocks"), (), bottom=True)
    top = _cut(model, "blocks", k, _before(model, "blocks"), _TIMM_STEM_PARAMS, bottom=False)
    return Steps(bottom, _timm_vit_bottom), Steps(top, _timm_vit_top), k, len(model.blocks)


def _timm_vit_bottom(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # forward_features up to the split: (b, 3, h, w) -> tokens (b, prefix + patches, d)
    return m.blocks(m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x)))))


def _timm_vit_top(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.forward_head(m.norm(m.blocks(x)))  # tokens (b, n, d) -> logits (b, classes)


# ---- torchvision.models.vision_transformer.VisionTransformer -------------------------------------------------------


def torchvision_vit(model: nn.Module, at: int | float) -> Built:
    k = resolve_at(at, len(model.encoder.layers))
    bottom = _cut(model, "encoder.layers", k, ("encoder.ln", "heads"), (), bottom=True)
    top = _cut(model, "encoder.layers", k, ("conv_proj", "encoder.dropout"),
               ("class_token", "encoder.pos_embedding"), bottom=False)
    return Steps(bottom, _torchvision_vit_bottom), Steps(top, _torchvision_vit_top), k, len(model.encoder.layers)


def _torchvision_vit_bottom(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # VisionTransformer.forward and Encoder.forward up to the split: (b, 3, h, w) -> tokens (b, 1 + patches, d)
    x = m._process_input(x)
    x = torch.cat([m.class_token.expand(x.shape[0], -1, -1), x], dim=1)
    return m.encoder.layers(m.encoder.dropout(x + m.encoder.pos_embedding))


def _torchvision_vit_top(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.heads(m.encoder.ln(m.encoder.layers(x))[:, 0])  # the class token's state -> logits


# ---- timm.models.convnext.ConvNeXt: stem, stages (downsample, blocks), norm_pre, head ------------------------------


def timm_convnext(model: nn.Module, at: int | float) -> Built:
    """Counts the blocks of all stages; a stage cut inside runs its downsample in the bottom, a stage that starts
    the top runs its own."""
    k = resolve_at(at, sum(len(stage.blocks) for stage in model.stages))
    below, above, done = _cut_stages(model.stages, k, "blocks", {"downsample": nn.Identity()})
    bottom = nn.Sequential(model.stem, *below)  # forward_features up to the split
    top = replace(model, {"stem": nn.Identity(), "stages": nn.Sequential(*above)})  # its forward() runs the rest
    return bottom, top, k, done


def _cut_stages(stages: nn.Module, k: int, blocks: str, no_downsample: dict[str, nn.Module],
                below_edits: dict[str, nn.Module | None] | None = None):
    """(stages of the bottom, stages of the top, blocks in all): a stage cut after its j-th block keeps its
    downsampling in the bottom part; the top part gets ``no_downsample`` in its place. A stage that downsamples
    after its blocks (Swin) passes ``no_downsample={}`` and ``below_edits`` for its bottom part instead."""
    below, above, done = [], [], 0
    for stage in stages:
        n = len(stage.get_submodule(blocks))
        j = min(max(k - done, 0), n)  # this stage's blocks in the bottom
        if j == n:
            below.append(stage)
        elif j == 0:
            above.append(stage)
        else:
            below.append(replace(stage, {**(below_edits or {}), blocks: _part(stage.get_submodule(blocks), 0, j)}))
            above.append(replace(stage, {**no_downsample, blocks: _part(stage.get_submodule(blocks), j, n)}))
        done += n
    return below, above, done


def _part(layers: nn.Module, i: int, j: int) -> nn.Module:
    """Items i..j of a ModuleList or Sequential, as the same kind of list."""
    items = list(layers)[i:j]
    return nn.ModuleList(items) if isinstance(layers, nn.ModuleList) else nn.Sequential(*items)


# ---- transformers ConvNeXt: embeddings, encoder.stages (downsampling_layer, layers), pooler norm --------------------


def hf_convnext(model: nn.Module, at: int | float) -> Built:
    """As ``timm_convnext``, on transformers' ConvNextModel (and its classifier): the top is the model itself,
    fed the states as ``pixel_values`` past an identity stem."""
    base = model.base_model
    prefix = "" if base is model else model.base_model_prefix
    stages = base.encoder.stages
    k = resolve_at(at, sum(len(stage.layers) for stage in stages))
    below, above, done = _cut_stages(stages, k, "layers", {"downsampling_layer": nn.ModuleList()})
    bottom = Bottom(replace(base, {"encoder.stages": nn.ModuleList(below), "layernorm": nn.Identity()}))
    top = replace(model, {join(prefix, "embeddings"): nn.Identity(), join(prefix, "encoder.stages"): nn.ModuleList(above)})
    return bottom, top, k, done


# ---- transformers OPT: learned positions added in the decoder's forward, final norm and projection after -----------


def opt_top(base: nn.Module, at: int) -> dict[str, nn.Module | None]:
    edits = {"decoder.embed_positions": Zeros(base.decoder.embed_positions)}  # the states hold the positions
    if base.decoder.project_in is not None:  # embeddings narrower than the blocks: already projected
        edits["decoder.project_in"] = nn.Identity()
    return edits


def opt_bottom(base: nn.Module, at: int) -> dict[str, nn.Module | None]:
    tail = ("final_layer_norm", "project_out")  # after the blocks: the top applies them
    return {f"decoder.{n}": nn.Identity() for n in tail if getattr(base.decoder, n, None) is not None}


def shift_layer_types(top_base: nn.Module, k: int, blocks: int) -> None:
    """Give the top's base (a shallow copy) a config whose ``layer_types`` start at block k, as its blocks do.

    Forwards that pick each block's attention (sliding or full, attention or state space) and rope by its index in
    ``config.layer_types`` (Gemma2/3, Qwen2/3 with a sliding window, Cohere2, Jamba, ...) would give the top's first
    block the type of block 0. A config whose ``layer_types`` does not list one type per block, or lists one type
    only, is left as it is. A config that derives ``layer_types`` from other fields (a read-only property: Jamba,
    Mamba) gets a subclass where it is a plain field.
    """
    import copy

    types = getattr(getattr(top_base, "config", None), "layer_types", None)
    if not isinstance(types, (list, tuple)) or len(types) != blocks or len(set(types)) == 1:
        return
    config = copy.copy(top_base.config)
    if isinstance(getattr(type(config), "layer_types", None), property):
        config.__class__ = _settable(type(config))
    config.layer_types = list(types[k:])
    top_base.config = config


_SETTABLE: dict[type, type] = {}


def _settable(cls: type) -> type:
    """``cls`` with ``layer_types`` a plain attribute in place of its read-only property (one subclass per class)."""
    if cls not in _SETTABLE:
        _SETTABLE[cls] = type(cls.__name__, (cls,), {"layer_types": None, "__module__": cls.__module__})
    return _SETTABLE[cls]


def unscale(top_base: nn.Module, names: tuple[str, ...]) -> None:
    """Set the float attributes ``names`` of the top's base (a shallow copy) to 1: factors its forward applies to
    the embeddings (Granite's ``embedding_multiplier``), which the stored states carry already."""
    for name in names:
        setattr(top_base, name, 1.0)


# ---- the generic rule's bottom ---------------------------------------------------------------------------------------


class Chain(nn.Sequential):
    """The generic bottom: stem modules then blocks, in order. A block that returns a tuple (an ``nn.LSTM``'s
    ``(output, state)``, a transformers layer's ``(hidden, ...)``) passes its first item on, as ``x, _ = block(x)``
    in a model's forward does; the self-check verifies that the model's forward agrees."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self:
            x = module(x)
            if isinstance(x, (tuple, list)):
                x = x[0]
        return x


# ---- transformers T5 encoder: block 0 computes the relative position bias that every later block reuses -------------


def _t5_encoder_only(base: nn.Module) -> None:
    if getattr(base, "decoder", None) is not None:
        raise ValueError(
            f"{type(base).__name__} is an encoder-decoder: its decoder reads the encoder's output and its own "
            f"inputs, which a split of the encoder does not serve. Recycle T5EncoderModel (or "
            f"T5ForTokenClassification), e.g. T5EncoderModel.from_pretrained(name)"
        )


def t5_top(base: nn.Module, at: int) -> dict[str, nn.Module | None]:
    """The top's first block computes the position bias with block 0's table (it has none of its own)."""
    _t5_encoder_only(base)
    blocks = base.encoder.block
    if at in (0, len(blocks)):
        return {}
    attention = shallow(blocks[at].layer[0].SelfAttention)
    attention.has_relative_attention_bias = True
    attention.relative_attention_bias = blocks[0].layer[0].SelfAttention.relative_attention_bias
    return {"encoder.block.0.layer.0.SelfAttention": attention}


def t5_bottom(base: nn.Module, at: int) -> dict[str, nn.Module | None]:
    _t5_encoder_only(base)
    return {"encoder.final_layer_norm": nn.Identity()}  # after the blocks: the top applies it


# ---- transformers ALBERT: one list of shared layer groups applied num_hidden_layers times --------------------------


class AlbertRun(nn.Module):
    """Applications ``j..k`` of ALBERT's shared layer groups (a level counts applications, not groups): (states
    (b, t, e) at j = 0, else (b, t, h); the extended mask) -> states after application k. Holds only the groups it
    applies; a group both halves apply is frozen with the bottom, so the top trains it only when k = 0."""

    def __init__(self, encoder: nn.Module, j: int, k: int):
        super().__init__()
        self.config, self.j, self.k = encoder.config, j, k
        self.embedding_hidden_mapping_in = encoder.embedding_hidden_mapping_in if j == 0 < k else None
        self.groups = nn.ModuleDict({str(g): encoder.albert_layer_groups[g] for g in map(self._group, range(j, k))})

    def _group(self, i: int) -> int:  # as AlbertTransformer.forward picks it
        return int(i / (self.config.num_hidden_layers / self.config.num_hidden_groups))

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        if self.embedding_hidden_mapping_in is not None:
            hidden_states = self.embedding_hidden_mapping_in(hidden_states)
        for i in range(self.j, self.k):
            hidden_states = self.groups[str(self._group(i))](hidden_states, attention_mask, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)


def albert(model: nn.Module, at: int | float) -> Built:
    base = model.base_model
    prefix = "" if base is model else model.base_model_prefix
    n = base.config.num_hidden_layers
    k = resolve_at(at, n)
    tail = {t: nn.Identity() for t in ("pooler", "pooler_activation") if getattr(base, t, None) is not None}
    bottom = Bottom(replace(base, {"encoder": AlbertRun(base.encoder, 0, k), **tail}))
    top = replace(model, {join(prefix, "embeddings"): Seam(base.embeddings, "inputs_embeds"),
                          join(prefix, "encoder"): AlbertRun(base.encoder, k, n)})
    return bottom, Top(top, "inputs_embeds"), k, n  # fed the states as its embeddings


# ---- transformers Whisper encoder: convolutions and positions in forward(), a fixed 30 s input, no mask ------------


class WhisperTop(nn.Module):
    """Whisper's encoder above block k: states (b, frames, d) -> BaseModelOutput after the blocks and final norm."""

    def __init__(self, encoder: nn.Module, k: int):
        super().__init__()
        self.layers, self.layer_norm = nn.ModuleList(list(encoder.layers)[k:]), encoder.layer_norm

    def forward(self, states: torch.Tensor, **kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        for layer in self.layers:  # as WhisperEncoder.forward calls them: no mask
            states = layer(states, None)
        return BaseModelOutput(last_hidden_state=self.layer_norm(states))


class WhisperClassifierTop(nn.Module):
    """WhisperForAudioClassification above block k: its own forward, handed the encoder's output."""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.encoder = WhisperTop(model.encoder, k)
        self.model = replace(model, {"encoder": self.encoder})  # only the top's blocks: the rest is in the bottom

    def forward(self, states: torch.Tensor, **kwargs):
        return self.model(encoder_outputs=self.encoder(states), **kwargs)


def whisper(model: nn.Module, at: int | float) -> Built:
    """WhisperEncoder or WhisperForAudioClassification; the encoder-decoder models are refused."""
    if getattr(model.config, "use_weighted_layer_sum", False):
        raise ValueError(f"{type(model).__name__} with use_weighted_layer_sum=True reads every block's states, which "
                         f"a split does not keep; set config.use_weighted_layer_sum=False or do not recycle it")
    encoder = model.encoder if hasattr(model, "encoder") and hasattr(model, "classifier") else model
    if not hasattr(encoder, "conv1"):
        raise ValueError(
            f"{type(model).__name__} is a Whisper encoder-decoder: its decoder reads inputs a split of the encoder "
            f"does not serve. Recycle its encoder (model.get_encoder()) or WhisperForAudioClassification"
        )
    k = resolve_at(at, len(encoder.layers))
    bottom = Bottom(replace(encoder, {"layers": nn.ModuleList(list(encoder.layers)[:k]), "layer_norm": nn.Identity()}))
    top = WhisperTop(encoder, k) if encoder is model else WhisperClassifierTop(model, k)
    return bottom, top, k, len(encoder.layers)
