"""Tiny random models of today's transformers families (hidden 32, 4 blocks), and examples for each modality.

``FAMILIES`` maps a case name to (table key, transformers class prefix, config builder, heads, input kind). A class
or config the installed transformers lacks makes ``build`` raise ``Missing`` naming it (tests skip on it).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import transformers as T
from torch import nn

VOCAB, HIDDEN, LAYERS, HEADS, LABELS = 99, 32, 4, 2, 3
CLIPS = (400, 250, 330, 250, 420, 300)  # samples of the audio examples, in turn
_TEXT = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
             intermediate_size=37, max_position_embeddings=64, num_labels=LABELS)
_DEC = dict(_TEXT, num_key_value_heads=1, head_dim=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_VISION = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=37,
               image_size=16, patch_size=4, num_labels=LABELS)
_TOKEN_HEADS = ["Model", "ForCausalLM", "ForSequenceClassification", "ForTokenClassification"]
_SLIDING = dict(use_sliding_window=True, sliding_window=3, max_window_layers=2)


# Speech encoders over raw audio: a small conv feature encoder (a clip of n samples gives ((n - 10) // 5 + 1 - 3)
# // 2 + 1 frames: 400 -> 39, 250 -> 24), group-normed over time as the base models are, or layer-normed with the
# "stable layer norm" encoder (blocks normed first, one norm after them) as the large ones are.
_SPEECH = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=37,
               conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=4,
               num_conv_pos_embedding_groups=2, num_labels=LABELS, vocab_size=11, tdnn_dim=(8, 8), tdnn_kernel=(3, 3),
               tdnn_dilation=(1, 2), xvector_output_dim=8, classifier_proj_size=8)
_STABLE = dict(_SPEECH, do_stable_layer_norm=True, feat_extract_norm="layer")
_SPEECH_HEADS = ["Model", "ForCTC", "ForSequenceClassification", "ForAudioFrameClassification", "ForXVector"]
# Outputs the recycled model does not give: the speech models' normed feature-encoder output (``extract_features``),
# which no stored state carries (it is None). Every other output is compared.
NOT_SERVED = ("extract_features",)
# Windows of 2 on feature maps of 8 and 4 patches a side: every second block shifts its windows, the first stage
# ends in a patch merging, and a level inside a stage leaves the merging to the top.
_SWIN = dict(image_size=16, patch_size=2, embed_dim=8, depths=[2, 2], num_heads=[1, 1], window_size=2,
             num_labels=LABELS)
# A relative position bias in every block and a shared one, sized by the image; absolute positions too. (BEiT: one in
# every block, as its fine-tuned checkpoints.)
_D2V = dict(_VISION, use_relative_position_bias=True, use_shared_relative_position_bias=True,
            use_absolute_position_embeddings=True)


class Missing(Exception):
    """A family or head the installed transformers does not have."""


def _cfg(name: str, **kwargs: Any) -> Callable[[], Any]:
    def make():
        cls = getattr(T, name, None)
        if cls is None:
            raise Missing(f"transformers {T.__version__} has no {name}")
        return cls(**kwargs)
    return make


# case -> (table key, class prefix, config, heads, inputs: "text" | "pixels" | "features" | "audio")
FAMILIES: dict[str, tuple[str, str, Callable[[], Any], list[str], str]] = {
    # Sliding-window blocks after full ones (layer_types [full, full, sliding, sliding]); windows shorter than the
    # examples: a top that gave its blocks the types of blocks 0.. would attend over the wrong spans.
    "qwen3": ("qwen3", "Qwen3", _cfg("Qwen3Config", **_DEC, **_SLIDING), _TOKEN_HEADS, "text"),
    "qwen2": ("qwen2", "Qwen2", _cfg("Qwen2Config", **_DEC, **_SLIDING), _TOKEN_HEADS, "text"),
    "gemma": ("gemma", "Gemma", _cfg("GemmaConfig", **_DEC), _TOKEN_HEADS, "text"),
    "gemma2": ("gemma2", "Gemma2", _cfg("Gemma2Config", **_DEC, sliding_window=4, attn_logit_softcapping=5.0,
                                        final_logit_softcapping=3.0), _TOKEN_HEADS, "text"),
    "gemma3_text": ("gemma3_text", "Gemma3", _cfg("Gemma3TextConfig", **_DEC, sliding_window=3, layer_types=[
        "sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]),  # local and global rope
                    ["TextModel", "ForCausalLM"], "text"),
    "phi3": ("phi3", "Phi3", _cfg("Phi3Config", **_DEC), _TOKEN_HEADS, "text"),
    "opt": ("opt", "OPT", _cfg("OPTConfig", vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                               num_attention_heads=HEADS, ffn_dim=37, max_position_embeddings=64,
                               word_embed_proj_dim=HIDDEN, num_labels=LABELS, pad_token_id=0, bos_token_id=1,
                               eos_token_id=2),
            ["Model", "ForCausalLM", "ForSequenceClassification"], "text"),
    "gpt_neox": ("gpt_neox", "GPTNeoX", _cfg("GPTNeoXConfig", **_TEXT, pad_token_id=0, bos_token_id=1,
                                             eos_token_id=2), _TOKEN_HEADS, "text"),
    "falcon": ("falcon", "Falcon", _cfg("FalconConfig", vocab_size=VOCAB, hidden_size=HIDDEN,
                                        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_labels=LABELS,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=2), _TOKEN_HEADS, "text"),
    "bloom": ("bloom", "Bloom", _cfg("BloomConfig", vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS,
                                     n_head=HEADS, num_labels=LABELS, pad_token_id=0, bos_token_id=1,
                                     eos_token_id=2), _TOKEN_HEADS, "text"),
    "camembert": ("camembert", "Camembert", _cfg("CamembertConfig", **_TEXT, pad_token_id=1),
                  ["Model", "ForSequenceClassification"], "text"),
    "deberta": ("deberta", "Deberta", _cfg("DebertaConfig", **_TEXT, relative_attention=True,
                                           max_relative_positions=16, pos_att_type=["p2c", "c2p"]),
                ["Model", "ForSequenceClassification", "ForTokenClassification"], "text"),
    "albert": ("albert", "Albert", _cfg("AlbertConfig", **_TEXT, embedding_size=16, num_hidden_groups=2,
                                        pad_token_id=0),
               ["Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification"], "text"),
    "modernbert": ("modernbert", "ModernBert", _cfg("ModernBertConfig", **_TEXT, pad_token_id=0, bos_token_id=1,
                                                    eos_token_id=2, cls_token_id=1, sep_token_id=2,
                                                    local_attention=4, global_attn_every_n_layers=2),
                   ["Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification"], "text"),
    "t5": ("t5", "T5", _cfg("T5Config", vocab_size=VOCAB, d_model=HIDDEN, d_kv=16, d_ff=37, num_layers=LAYERS,
                            num_heads=HEADS, relative_attention_num_buckets=8, num_labels=LABELS, pad_token_id=0),
           ["EncoderModel", "ForTokenClassification"], "text"),
    "clip_vision": ("clip_vision_model", "CLIPVision", _cfg("CLIPVisionConfig", **_VISION), ["Model"], "pixels"),
    "siglip_vision": ("siglip_vision_model", "SiglipVision", _cfg("SiglipVisionConfig", **_VISION), ["Model"],
                      "pixels"),
    "convnext": ("convnext", "ConvNext", _cfg("ConvNextConfig", num_channels=3, patch_size=2, image_size=16,
                                              hidden_sizes=[8, 12, 16, 20], depths=[1, 1, 1, 1], num_labels=LABELS),
                 ["Model", "ForImageClassification"], "pixels"),
    "whisper": ("whisper", "Whisper", _cfg("WhisperConfig", vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS,
                                            encoder_attention_heads=HEADS, decoder_layers=1, decoder_attention_heads=HEADS,
                                            encoder_ffn_dim=37, decoder_ffn_dim=37, num_mel_bins=8,
                                            max_source_positions=16, classifier_proj_size=8, num_labels=LABELS,
                                            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1),
                ["Encoder", "ForAudioClassification"], "features"),
    # Pooled at the end-of-text token CLIP finds in input_ids (eos_token_id 2: the largest id, wherever it falls in
    # these random rows; test_text_towers.py covers the first-eos rule), or at SigLIP's last token.
    "clip_text": ("clip_text_model", "CLIPText", _cfg("CLIPTextConfig", **_TEXT, projection_dim=8, pad_token_id=0,
                                                      bos_token_id=1, eos_token_id=2), ["Model", "ModelWithProjection"],
                  "text"),
    "siglip_text": ("siglip_text_model", "SiglipText", _cfg("SiglipTextConfig", **_TEXT, projection_size=8,
                                                            pad_token_id=0, bos_token_id=1, eos_token_id=2), ["Model"],
                    "text"),
    "dinov2": ("dinov2", "Dinov2", _cfg("Dinov2Config", **_VISION), ["Model", "ForImageClassification"], "pixels"),
    "wav2vec2": ("wav2vec2", "Wav2Vec2", _cfg("Wav2Vec2Config", **_SPEECH), _SPEECH_HEADS, "audio"),
    "wav2vec2_stable": ("wav2vec2", "Wav2Vec2", _cfg("Wav2Vec2Config", **_STABLE), _SPEECH_HEADS, "audio"),
    "hubert": ("hubert", "Hubert", _cfg("HubertConfig", **_SPEECH), ["Model", "ForCTC", "ForSequenceClassification"],
               "audio"),
    "wavlm": ("wavlm", "WavLM", _cfg("WavLMConfig", **_SPEECH, num_buckets=8, max_bucket_distance=16),
              _SPEECH_HEADS, "audio"),
    "wavlm_stable": ("wavlm", "WavLM", _cfg("WavLMConfig", **_STABLE, num_buckets=8, max_bucket_distance=16),
                     _SPEECH_HEADS, "audio"),
    # data2vec-audio's positional embedding is a stack of convolutions and norms (one per num_conv_pos_embeddings)
    "data2vec_audio": ("data2vec-audio", "Data2VecAudio", _cfg("Data2VecAudioConfig", **dict(
        _SPEECH, num_conv_pos_embeddings=3)), _SPEECH_HEADS, "audio"),
    "ast": ("audio-spectrogram-transformer", "AST", _cfg("ASTConfig", **dict(_VISION, image_size=None, patch_size=4),
                                                         num_mel_bins=16, max_length=24, frequency_stride=4,
                                                         time_stride=4), ["Model", "ForAudioClassification"],
            "spectrogram"),
    "deit": ("deit", "DeiT", _cfg("DeiTConfig", **_VISION), ["Model", "ForImageClassification"], "pixels"),
    "swin": ("swin", "Swin", _cfg("SwinConfig", **_SWIN), ["Model", "ForImageClassification"], "pixels"),
    "swinv2": ("swinv2", "Swinv2", _cfg("Swinv2Config", **_SWIN), ["Model", "ForImageClassification"], "pixels"),
    "data2vec-vision": ("data2vec-vision", "Data2VecVision", _cfg("Data2VecVisionConfig", **_D2V),
                        ["Model", "ForImageClassification"], "pixels"),
    "beit": ("beit", "Beit", _cfg("BeitConfig", **_VISION, use_relative_position_bias=True,
                                  use_absolute_position_embeddings=True),
             ["Model", "ForImageClassification"], "pixels"),
}


def build(case: str, head: str, seed: int = 0) -> nn.Module:
    """The tiny random ``case`` model with ``head`` (a class suffix), in eval mode."""
    _, prefix, config, _, _ = FAMILIES[case]
    cls = getattr(T, prefix + head, None) or getattr(_modeling(prefix), prefix + head, None)
    if cls is None:
        raise Missing(f"transformers {T.__version__} has no {prefix + head}")
    torch.manual_seed(seed)
    return cls(config()).eval()


def cohere2(seed: int = 0) -> nn.Module:
    """A tiny Cohere2 (outside the table) with sliding blocks below full ones, in eval mode."""
    cls = getattr(T, "Cohere2Model", None)
    if cls is None:
        raise Missing(f"transformers {T.__version__} has no Cohere2Model")
    torch.manual_seed(seed)
    types = ["sliding_attention", "sliding_attention", "full_attention", "full_attention"]
    config = T.Cohere2Config(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                             num_attention_heads=HEADS, num_key_value_heads=1, intermediate_size=37,
                             max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                             sliding_window=3, layer_types=types)
    return cls(config).eval()


def _modeling(prefix: str) -> Any:
    """transformers' modeling module of a family: classes it does not export (WhisperEncoder) live there."""
    import importlib

    try:
        return importlib.import_module(f"transformers.models.{prefix.lower()}.modeling_{prefix.lower()}")
    except ImportError:
        return None


def examples(case: str, n: int = 3, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Unpadded one-example dicts of ``case``'s input kind (token ids of different lengths, or images)."""
    kind = FAMILIES[case][4] if case in FAMILIES else FOUND[case][3]
    g = torch.Generator().manual_seed(seed)
    if kind.startswith("pixels"):  # "pixels:<side>" for models that need larger images than 16 x 16
        side = int(kind.partition(":")[2] or 16)
        return [{"pixel_values": torch.randn(3, side, side, generator=g)} for _ in range(n)]
    if kind == "features":  # log-mel frames, padded to the model's fixed length as its feature extractor does
        return [{"input_features": torch.randn(8, 32, generator=g)} for _ in range(n)]
    if kind == "spectrogram":  # AST: (max_length frames, mel bins), cut or padded to that size by its extractor
        return [{"input_values": torch.randn(24, 16, generator=g)} for _ in range(n)]
    if kind == "audio":  # raw clips of different lengths (two of one length: the stem runs them together)
        return [{"input_values": torch.randn(CLIPS[i % 6], generator=g)} for i in range(n)]
    lengths = (5, 9, 3, 7, 2, 6)
    return [{"input_ids": torch.randint(3, VOCAB, (lengths[i % 6],), generator=g)} for i in range(n)]


def padded(rows: list[dict[str, torch.Tensor]], side: str, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """A batch of ``rows``: token ids (or clips, padded with 0.0) padded on ``side`` ("right"/"left") with one extra
    column; images stacked."""
    name = "input_ids" if "input_ids" in rows[0] else "input_values"
    if name not in rows[0] or rows[0][name].dim() != 1:
        return {n: torch.stack([r[n] for r in rows]) for n in rows[0]}
    t = max(len(r[name]) for r in rows) + 1
    ids = torch.full((len(rows), t), pad_id if name == "input_ids" else 0, dtype=rows[0][name].dtype)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r[name])
        cols = slice(0, n) if side == "right" else slice(t - n, t)
        ids[i, cols], mask[i, cols] = r[name], 1
    return {name: ids, "attention_mask": mask}


def is_audio(rows: list[dict[str, torch.Tensor]]) -> bool:
    """Raw clips (``input_values`` of one dim): stored as frames, and served right-padded only."""
    return "input_values" in rows[0] and rows[0]["input_values"].dim() == 1


def alone(model: nn.Module, rows: list[dict]) -> list[dict[str, torch.Tensor]]:
    """Each example's outputs with the model run on it alone (batch of one, no padding)."""
    with torch.no_grad():
        return [{n: v[0] for n, v in _tensors(model(**{k: x[None] for k, x in row.items()})).items()
                 if n not in NOT_SERVED} for row in rows]


def worst(want: list[dict[str, torch.Tensor]], batch: dict, out: Any) -> float:
    """Max abs diff of a batch's outputs from ``alone``'s (per-token outputs on each row's real tokens only)."""
    mask = batch.get("attention_mask")
    got_all, result = _tensors(out), 0.0
    for i, outputs in enumerate(want):
        for name, expected in outputs.items():
            got = got_all[name][i]
            if mask is not None and got.dim() >= 1 and got.shape[0] == mask.shape[1] and name != "pooler_output":
                got = got[mask[i].bool()]
            elif mask is not None and got.dim() >= 2 and got.shape[0] > expected.shape[0]:  # a right-padded clip's
                got = got[: expected.shape[0]]  # frames: its own come first
            assert got.shape == expected.shape, f"{name}: {tuple(got.shape)} != alone {tuple(expected.shape)}"
            result = max(result, float((got - expected).abs().max()))
    return result


def _tensors(out: Any) -> dict[str, torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return {"output": out}
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and k != "loss"}


# Families outside the table, split by ``discover`` (no ``blocks=``), each with its expected result: "exact", or
# the start of its refusal. case -> (class prefix, config, heads, inputs)
_MOE = dict(num_experts_per_tok=2, moe_intermediate_size=16)
_DEC32 = dict(_DEC, intermediate_size=32)  # grouped expert matmuls need rows of a multiple of 16 bytes
_STAGES = dict(num_channels=3, embedding_size=8, hidden_sizes=[8, 12, 16, 20], depths=[1, 1, 1, 1], num_labels=LABELS)
_TEXT_HEADS = ["Model", "ForSequenceClassification", "ForTokenClassification"]
_DEC_HEADS = ["Model", "ForCausalLM", "ForSequenceClassification"]
_IMAGE_HEADS = ["Model", "ForImageClassification"]
FOUND: dict[str, tuple[str, Callable[[], Any], list[str], str]] = {
    "mixtral": ("Mixtral", _cfg("MixtralConfig", **_DEC32, num_local_experts=4, num_experts_per_tok=2), _DEC_HEADS,
                "text"),
    "qwen2_moe": ("Qwen2Moe", _cfg("Qwen2MoeConfig", **_DEC32, **_MOE, num_experts=4,
                                   shared_expert_intermediate_size=16), _DEC_HEADS, "text"),
    "qwen3_moe": ("Qwen3Moe", _cfg("Qwen3MoeConfig", **_DEC32, **_MOE, num_experts=4), _DEC_HEADS, "text"),
    "olmo2": ("Olmo2", _cfg("Olmo2Config", **_DEC), ["Model", "ForCausalLM"], "text"),
    "starcoder2": ("Starcoder2", _cfg("Starcoder2Config", **_DEC), _DEC_HEADS, "text"),
    "cohere2": ("Cohere2", _cfg("Cohere2Config", **_DEC, sliding_window=3, layer_types=[
        "sliding_attention", "sliding_attention", "full_attention", "full_attention"]), ["Model", "ForCausalLM"], "text"),
    "smollm3": ("SmolLM3", _cfg("SmolLM3Config", **_DEC), _DEC_HEADS, "text"),
    "glm": ("Glm", _cfg("GlmConfig", **_DEC), _DEC_HEADS, "text"),
    "glm4": ("Glm4", _cfg("Glm4Config", **_DEC), _DEC_HEADS, "text"),
    "gpt_oss": ("GptOss", _cfg("GptOssConfig", **_DEC32, num_local_experts=4, num_experts_per_tok=2, sliding_window=3),
                _DEC_HEADS, "text"),
    "stablelm": ("StableLm", _cfg("StableLmConfig", **_DEC), _DEC_HEADS, "text"),
    "granite": ("Granite", _cfg("GraniteConfig", **_DEC, embedding_multiplier=12.0), _DEC_HEADS, "text"),
    "mobilebert": ("MobileBert", _cfg("MobileBertConfig", **_TEXT, embedding_size=16, intra_bottleneck_size=16,
                                      true_hidden_size=16, num_feedforward_networks=1), _TEXT_HEADS, "text"),
    "big_bird": ("BigBird", _cfg("BigBirdConfig", **_TEXT, attention_type="original_full"), _TEXT_HEADS, "text"),
    "ernie": ("Ernie", _cfg("ErnieConfig", **_TEXT), _TEXT_HEADS, "text"),
    "data2vec-text": ("Data2VecText", _cfg("Data2VecTextConfig", **_TEXT, pad_token_id=1), _TEXT_HEADS, "text"),
    "xlnet": ("XLNet", _cfg("XLNetConfig", vocab_size=VOCAB, d_model=HIDDEN, n_layer=LAYERS, n_head=HEADS, d_inner=37,
                            num_labels=LABELS), ["Model", "ForTokenClassification"], "text"),
    "megatron-bert": ("MegatronBert", _cfg("MegatronBertConfig", **_TEXT), _TEXT_HEADS, "text"),
    "esm": ("Esm", _cfg("EsmConfig", **_TEXT, pad_token_id=1, mask_token_id=3, token_dropout=False,
                        position_embedding_type="rotary"), ["Model", "ForTokenClassification"], "text"),
    "roformer": ("RoFormer", _cfg("RoFormerConfig", **_TEXT, embedding_size=16), _TEXT_HEADS, "text"),
    "mamba": ("Mamba", _cfg("MambaConfig", vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                            state_size=8, expand=2, conv_kernel=4), ["Model", "ForCausalLM"], "text"),
    "falcon_mamba": ("FalconMamba", _cfg("FalconMambaConfig", vocab_size=VOCAB, hidden_size=HIDDEN,
                                         num_hidden_layers=LAYERS, state_size=8, expand=2, conv_kernel=4),
                     ["Model", "ForCausalLM"], "text"),
    "jamba": ("Jamba", _cfg("JambaConfig", **_DEC32, num_experts=2, num_experts_per_tok=1, attn_layer_period=2,
                            attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, mamba_d_state=8,
                            mamba_expand=2, mamba_dt_rank=4, use_mamba_kernels=False), _DEC_HEADS, "text"),
    "dinov2_with_registers": ("Dinov2WithRegisters", _cfg("Dinov2WithRegistersConfig", **_VISION,
                                                          num_register_tokens=2), _IMAGE_HEADS, "pixels"),
    "convnextv2": ("ConvNextV2", _cfg("ConvNextV2Config", num_channels=3, patch_size=2, image_size=16,
                                      hidden_sizes=[8, 12, 16, 20], depths=[1, 1, 1, 1], num_labels=LABELS),
                   _IMAGE_HEADS, "pixels"),
    "resnet": ("ResNet", _cfg("ResNetConfig", **_STAGES, layer_type="basic"), _IMAGE_HEADS, "pixels"),
    "regnet": ("RegNet", _cfg("RegNetConfig", **dict(_STAGES, hidden_sizes=[8, 16, 16, 32]), groups_width=8),
               _IMAGE_HEADS, "pixels"),
    "bit": ("Bit", _cfg("BitConfig", **dict(_STAGES, embedding_size=32, hidden_sizes=[32, 32, 32, 32]), num_groups=4),
            _IMAGE_HEADS, "pixels"),
    "efficientnet": ("EfficientNet", _cfg("EfficientNetConfig", image_size=32, width_coefficient=0.25,
                                          depth_coefficient=0.25, hidden_dim=320, num_labels=LABELS), _IMAGE_HEADS,
                     "pixels:32"),
    "vit_mae": ("ViTMAE", _cfg("ViTMAEConfig", **_VISION), ["Model"], "pixels"),
    "levit": ("Levit", _cfg("LevitConfig", image_size=64, hidden_sizes=[16, 24, 32], num_attention_heads=[2, 2, 2],
                            depths=[2, 1, 1], key_dim=[8, 8, 8], num_labels=LABELS), _IMAGE_HEADS, "pixels:64"),
    "mobilevit": ("MobileViT", _cfg("MobileViTConfig", image_size=32, hidden_sizes=[16, 24, 32], num_attention_heads=2,
                                    neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 40], num_labels=LABELS), _IMAGE_HEADS,
                  "pixels:32"),
    "funnel": ("Funnel", _cfg("FunnelConfig", vocab_size=VOCAB, block_sizes=[1, 1], d_model=HIDDEN, n_head=HEADS,
                              d_head=16, d_inner=37, num_labels=LABELS), ["Model"], "text"),
    "nystromformer": ("Nystromformer", _cfg("NystromformerConfig", **_TEXT, num_landmarks=4,
                                            segment_means_seq_len=8), ["Model"], "text"),
}


def build_found(case: str, head: str, seed: int = 0) -> nn.Module:
    """The tiny random ``case`` model of ``FOUND`` with ``head``, in eval mode."""
    prefix, config, _, _ = FOUND[case]
    cls = getattr(T, prefix + head, None)
    if cls is None:
        raise Missing(f"transformers {T.__version__} has no {prefix + head}")
    torch.manual_seed(seed)
    return cls(config()).eval()
