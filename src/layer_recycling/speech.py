"""Halves of the speech encoders over raw audio (Wav2Vec2, HuBERT, WavLM, data2vec-audio) and their heads.

A clip of n samples becomes ``frames(model, n)`` states (the conv feature encoder's output length, as transformers'
``_get_feat_extract_output_lengths`` computes it), and each clip is stored with its own frame count. The base
models' feature encoder normalises over time (``feat_extract_norm="group"``) and data2vec-audio's positional
convolutions stack norms and convolutions: run on a padded batch, both mix a clip with its padding. So the bottom runs
its stem (feature encoder, projection, positional convolution) on each distinct clip length alone, unpadded, and only
its blocks on the batch, with the frames' mask. The top is the model's own forward with the stem replaced by a
pass-through, fed the stored frames and their mask (the model's length function made the identity on the top's copy,
so its heads pool and count frames from that mask).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from . import batches
from .surgery import replace, resolve_at, shallow

# Heads whose forward reads only the base model's last hidden state and the mask (frames are counted from it).
HEADS = ("Model", "ForCTC", "ForSequenceClassification", "ForAudioFrameClassification", "ForXVector")


def frames(model: nn.Module, n: int) -> int:
    """States a clip of ``n`` samples yields: the conv feature encoder's output length (0 if it is too short)."""
    config = model.config
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        n = (n - kernel) // stride + 1 if n >= kernel else 0
    return n


def receptive_field(model: nn.Module) -> int:
    """The fewest samples that give one frame."""
    n = 1
    for kernel, stride in reversed(list(zip(model.config.conv_kernel, model.config.conv_stride))):
        n = (n - 1) * stride + kernel
    return n


class ZerosLike(nn.Module):
    """The positional convolution in a run of blocks fed states: the stored states hold its output already."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def _stable(encoder: nn.Module) -> bool:
    # The "stable layer norm" encoders norm after the blocks; the others norm the stem's output before them.
    return type(encoder).__name__.endswith("StableLayerNorm")


def run(base: nn.Module, j: int, k: int, top: bool) -> nn.Module:
    """The base's encoder running blocks ``j..k`` on states (b, frames, h) with the frames' mask (bool (b, frames)):
    no positional convolution, stem norm or dropout (the states hold them); a stable encoder's final norm only in
    the ``top``. WavLM's relative position bias, computed by block 0's attention, is computed by block j's with
    block 0's table."""
    encoder, layers = base.encoder, list(base.encoder.layers)
    edits: dict[str, nn.Module] = {"pos_conv_embed": ZerosLike(), "dropout": nn.Identity(),
                                   "layers": nn.ModuleList(layers[j:k])}
    if not (_stable(encoder) and top):
        edits["layer_norm"] = nn.Identity()
    bias = getattr(layers[0].attention, "rel_attn_embed", None)
    if bias is not None and 0 < j < k:
        attention = shallow(layers[j].attention)
        attention.rel_attn_embed = bias
        edits["layers.0"] = replace(layers[j], {"attention": attention})
    return replace(encoder, edits)


class SpeechBottom(nn.Module):
    """The stem on each clip alone, then blocks ``0..k`` on the batch: (input_values (b, s), attention_mask (b, s))
    -> states (b, frames, h), each row as its clip alone gives them (zeros past its frames)."""

    def __init__(self, base: nn.Module, k: int):
        super().__init__()
        stem = {"encoder.layers": nn.ModuleList()}
        if _stable(base.encoder):
            stem["encoder.layer_norm"] = nn.Identity()  # after the blocks: the top's
        self.stem, self.blocks, self.k = replace(base, stem), run(base, 0, k, top=False), k

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        clips = [c["input_values"] for c in batches.Layout.of(
            {"input_values": input_values, "attention_mask": attention_mask}).rows({"input_values": input_values})]
        counts = [frames(self.stem, len(c)) for c in clips]
        short = next((i for i, n in enumerate(counts) if n < 1), None)
        if short is not None:
            raise ValueError(
                f"clip {short} has {len(clips[short])} samples, fewer than the {receptive_field(self.stem)} the "
                f"feature encoder needs for one frame: the model cannot run it. Drop or pad it"
            )
        states = self._stem_states(clips, max(counts))
        mask = batches.mask_for(counts, states.shape[1], states.device).bool()
        return states if self.k == 0 else self.blocks(states, attention_mask=mask)[0]

    def _stem_states(self, clips: list[torch.Tensor], width: int) -> torch.Tensor:
        """(b, width, h): the stem's states of each clip, run with the clips of its length only (its group norm
        never sees another clip's padding), zeros past its frames."""
        by_length: dict[int, list[int]] = {}
        for i, c in enumerate(clips):
            by_length.setdefault(len(c), []).append(i)
        states = None
        for rows in by_length.values():
            x = self.stem(input_values=torch.stack([clips[i] for i in rows]))[0]  # (g, frames, h)
            if states is None:
                states = x.new_zeros(len(clips), width, x.shape[-1])
            states[rows, : x.shape[1]] = x
        return states


def _same_length(lengths, add_adapter=None):
    """The top's length function: its inputs are frames already."""
    return lengths


def _tdnn_lengths(config, lengths):
    """Frames an XVector head's TDNN layers leave of ``lengths``: a dilated kernel spans dilation * (kernel - 1) + 1."""
    for kernel, dilation in zip(config.tdnn_kernel, config.tdnn_dilation):
        lengths = lengths - dilation * (kernel - 1)
    return lengths


def _unmasked(hidden_states, mask_time_indices=None, attention_mask=None):
    """No SpecAugment in the top: it masks the blocks' input, which the stored states are past."""
    return hidden_states


class Frames(nn.Module):
    """The feature encoder in the top: states (b, frames, h) as its (b, channels, frames) output."""

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return input_values.transpose(1, 2)


class Projected(nn.Module):
    """The feature projection in the top: the states, with no normed features (``extract_features`` is None) where
    the model's projection returns a pair."""

    def __init__(self, pair: bool):
        super().__init__()
        self.pair = pair

    def forward(self, hidden_states: torch.Tensor):
        return (hidden_states, None) if self.pair else hidden_states


class SpeechTop(nn.Module):
    """The model above block k fed states: (states (b, frames, h), attention_mask (b, frames)) -> its output.
    Without a mask every frame is real (the heads count frames from it)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones(states.shape[:2], dtype=torch.long, device=states.device)
        return self.model(input_values=states, attention_mask=attention_mask, **kwargs)


def _returns_pair(projection: nn.Module, width: int) -> bool:
    """Whether the feature projection returns (states, normed features), as Wav2Vec2's does (HuBERT's: states)."""
    with torch.no_grad():
        param = next(projection.parameters())
        return isinstance(projection(torch.zeros(1, 1, width, dtype=param.dtype, device=param.device)), tuple)


def _refuse(model: nn.Module) -> None:
    name, config = type(model).__name__, model.config
    if not name.endswith(HEADS):
        raise ValueError(f"{name} is refused: of this family's models only those ending in {', '.join(HEADS)} are "
                         f"proven (their heads read the last hidden state and the mask alone)")
    if getattr(config, "add_adapter", False):
        raise ValueError(f"{name} with add_adapter=True is refused: its adapter convolves the frames with a stride "
                         f"after the blocks, so a clip's last frame would read a padded frame of the batch. Recycle it "
                         f"without the adapter, or do not recycle it")
    if getattr(config, "use_weighted_layer_sum", False) and model is not model.base_model:
        raise ValueError(f"{name} with use_weighted_layer_sum=True reads every block's states, which a split does not "
                         f"keep; set config.use_weighted_layer_sum=False or do not recycle it")


def speech(model: nn.Module, at: int | float) -> tuple[nn.Module, nn.Module, int, int]:
    """Bottom and top of a speech encoder or one of its heads (``HEADS``); other heads and adapters refused."""
    _refuse(model)
    base = model.base_model
    prefix = "" if base is model else model.base_model_prefix
    n = len(base.encoder.layers)
    k = resolve_at(at, n)
    pair = _returns_pair(base.feature_projection, model.config.conv_dim[-1])
    top_base = replace(base, {"feature_extractor": Frames(), "feature_projection": Projected(pair),
                              "encoder": run(base, k, n, top=True)})
    top_base._parameters.pop("masked_spec_embed", None)  # SpecAugment's, which the top does not apply
    top_base._get_feat_extract_output_lengths = _same_length  # an instance's own: the user's model is not touched
    top_base._mask_hidden_states = _unmasked
    top = top_base if base is model else replace(model, {prefix: top_base})
    if top is not top_base:
        top._get_feat_extract_output_lengths = _same_length
    if hasattr(top, "_get_tdnn_output_lengths"):  # transformers' leaves out the dilation: it would pool padded frames
        top._get_tdnn_output_lengths = functools.partial(_tdnn_lengths, model.config)
    return SpeechBottom(base, k), SpeechTop(top), k, n

