"""The one table of architecture knowledge: where each model family keeps its blocks and what its top needs.

Everything family-specific lives here, keyed by transformers' ``config.model_type`` (other models by package and
class, see ``model_key``). A transformers model outside the table is split by ``discover`` (its block list found by
running it, the split checked at construction); any other module by the generic rule (``generic.find_blocks``: the
largest ``ModuleList``/``Sequential``, or a run of stage lists); ``blocks=`` overrides both.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Callable

from torch import nn

from . import halves, halves_vision, speech, text_towers
from .generic import find_blocks
from .heads import LastTokenClassifier
from .surgery import join


@dataclasses.dataclass(frozen=True)
class Arch:
    """How to cut one family of models. Paths are dotted attribute names inside the base model."""

    blocks: str | tuple[str, ...]
    """The list of repeated blocks (``nn.ModuleList``/``nn.Sequential``) that the split index counts; for a generic
    model a tuple of consecutive stage lists (ResNet's ``layer1``..``layer4``) whose blocks count as one list."""
    entry: str | None = "inputs_embeds"
    """The base model's forward argument that carries states past the stem into the blocks (None: positional)."""
    seam: tuple[str, ...] = ()
    """Stem modules the top replaces by a pass-through returning the ``entry`` argument."""
    blank: tuple[str, ...] = ()
    """Stem modules the top replaces by an identity (they would re-transform the cached states)."""
    zero: tuple[str, ...] = ()
    """Stem modules whose output is *added* to the states; the top replaces them by zeros."""
    tail: tuple[str, ...] = ()
    """Modules after the blocks (final norms, poolers); the bottom replaces them by an identity."""
    keep: tuple[str, ...] = ()
    """Children of a seamed module the base forward still reads (e.g. for a dtype check)."""
    masked: bool = True
    """Inputs are token sequences with an attention mask (states are ragged, re-padded per batch)."""
    frames: Callable[[nn.Module, int], int] | None = None
    """(model, positions of an input) -> states it yields, where that is not one per position (a clip's samples ->
    the feature encoder's frames); the store holds that many, and the top's mask marks them. None: one each."""
    top_fix: Callable[[nn.Module, int], dict[str, nn.Module | None]] | None = None
    """Family-specific edits of the top: (base model, split index) -> {dotted path in base: replacement}."""
    bottom_fix: Callable[[nn.Module, int], dict[str, nn.Module | None]] | None = None
    """Family-specific edits of the bottom, like ``top_fix``."""
    unscale: tuple[str, ...] = ()
    """Float attributes of the base model its forward multiplies ``inputs_embeds`` by (Granite's
    ``embedding_multiplier``): the stored states hold the product, so the top sets them to 1."""
    heads: tuple[tuple[str, Callable[[nn.Module], nn.Module]], ...] = ()
    """(head class suffix, wrapper): heads that read ``input_ids``, which the top does not receive, restated
    by a wrapper of the top model (e.g. ``heads.LastTokenClassifier``)."""
    generic: bool = False
    """A plain ``nn.Module``: the bottom is stem + blocks run in order, the top is the model with its stem blanked."""
    build: Callable[[nn.Module, int | float], tuple[nn.Module, nn.Module, int, int]] | None = None
    """For a model no list of modules run in order reproduces (a ViT's class token, ConvNeXt's stages): (model,
    ``at``) -> (bottom, top, blocks recycled, blocks in all), built by hand (``halves``)."""
    tested: bool = True
    """The split is proven equal to the un-split model by this library's tests (an entry of ``PROVEN``); False (the
    generic rule, a ``blocks=`` override, an entry added or replaced by a user): it compares itself with the model
    on its first batch, or on ``recycle(..., example=...)`` at construction (``checks.SplitCheck``)."""
    source: str = "architecture table"
    """Where this split's knowledge came from, for the self-check's messages."""


class _EmptyEncoder(nn.Module):
    """DeBERTa's encoder cannot run zero blocks; at split 0 this returns the embeddings unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=(hidden_states,))


def _deberta_top(base: nn.Module, at: int) -> dict[str, nn.Module | None]:
    # DeBERTa-v2 adds a convolution to the output of block 0; past the split that block is in the bottom.
    if at == len(base.encoder.layer):
        return {"encoder": _EmptyEncoder()}
    if at > 0 and getattr(base.encoder, "conv", None) is not None:
        return {"encoder.conv": None}
    return {}


def _deberta_bottom(base: nn.Module, at: int) -> dict[str, nn.Module | None]:
    return {"encoder": _EmptyEncoder()} if at == 0 else {}


_STAND_IN = "architecture table, an entry tested against a stand-in of the package only"
# Decoder classifiers pool the last non-pad token, found from input_ids: fed states, the top pools it from the mask.
_LAST_TOKEN = (("ForSequenceClassification", LastTokenClassifier),)
_DECODER = Arch(blocks="layers", tail=("norm",), heads=_LAST_TOKEN)
_BERT = Arch(blocks="encoder.layer", seam=("embeddings",), tail=("pooler",))
_VIT = Arch(blocks="layers", entry="pixel_values", seam=("embeddings",), keep=("patch_embeddings",),
            tail=("layernorm", "pooler"), masked=False)
_SPEECH = Arch(blocks="encoder.layers", entry="input_values", build=speech.speech, frames=speech.frames)

TABLE: dict[str, Arch] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "camembert": _BERT,
    "mpnet": _BERT,
    "electra": Arch(blocks="encoder.layer", seam=("embeddings",), blank=("embeddings_project",)),
    "distilbert": Arch(blocks="transformer.layer", seam=("embeddings",)),
    "deberta": Arch(blocks="encoder.layer", seam=("embeddings",), bottom_fix=_deberta_bottom),
    "deberta-v2": Arch(
        blocks="encoder.layer", seam=("embeddings",), top_fix=_deberta_top, bottom_fix=_deberta_bottom
    ),
    "vit": _VIT,
    "deit": _VIT,
    "dinov2": dataclasses.replace(_VIT, blocks="encoder.layer"),
    "gpt2": Arch(blocks="h", zero=("wpe",), blank=("drop",), tail=("ln_f",), heads=_LAST_TOKEN),
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
    "phi3": _DECODER,
    # Gemma's embedding module scales by sqrt(hidden) itself, so inputs_embeds skips the scaling as it should.
    "gemma": _DECODER,
    "gemma2": _DECODER,
    "gemma3_text": _DECODER,
    "opt": Arch(blocks="decoder.layers", top_fix=halves.opt_top, bottom_fix=halves.opt_bottom, heads=_LAST_TOKEN),
    "gpt_neox": Arch(blocks="layers", blank=("emb_dropout",), tail=("final_layer_norm",), heads=_LAST_TOKEN),
    "falcon": Arch(blocks="h", tail=("ln_f",), heads=_LAST_TOKEN),
    "bloom": Arch(blocks="h", blank=("word_embeddings_layernorm",), tail=("ln_f",), heads=_LAST_TOKEN),
    "modernbert": Arch(blocks="layers", seam=("embeddings",), tail=("final_norm",)),
    # T5's relative position bias lives in block 0 and is handed up the stack: the top's first block computes it.
    "t5": Arch(blocks="encoder.block", top_fix=halves.t5_top, bottom_fix=halves.t5_bottom),
    "clip_vision_model": dataclasses.replace(_VIT, blocks="encoder.layers", keep=(), blank=("pre_layrnorm",),
                                             tail=()),  # post_layernorm only norms the pooled output
    "siglip_vision_model": dataclasses.replace(_VIT, blocks="encoder.layers", keep=(),
                                               tail=("post_layernorm", "head")),
    # The pooled token is found in input_ids (CLIP) or is the batch's last (SigLIP): the halves carry it over.
    "clip_text_model": Arch(blocks="encoder.layers", build=text_towers.clip_text),
    "siglip_text_model": Arch(blocks="encoder.layers", build=text_towers.siglip_text),
    # ALBERT applies its shared layer groups num_hidden_layers times: a level counts applications.
    "albert": Arch(blocks="encoder.albert_layer_groups", build=halves.albert),
    "whisper": Arch(blocks="layers", entry="input_features", masked=False, build=halves.whisper),
    "convnext": Arch(blocks="encoder.stages", entry=None, masked=False, build=halves.hf_convnext),
    # Raw audio: a clip's frames are stored (as many as its samples give), its stem runs on each clip alone.
    **dict.fromkeys(("wav2vec2", "hubert", "wavlm", "data2vec-audio"), _SPEECH),
    # AST: a ViT over a spectrogram of a fixed size (its feature extractor pads or cuts it), no mask.
    "audio-spectrogram-transformer": dataclasses.replace(_VIT, entry="input_values", keep=()),
    # Stored as feature maps (b, d, h, w): the top's stages are handed their (height, width) from the states' shape.
    "swin": Arch(blocks="encoder.layers", entry=None, masked=False, build=halves_vision.swin),
    "swinv2": Arch(blocks="encoder.layers", entry=None, masked=False, build=halves_vision.swin),
    # Their relative position bias is sized by the image: the top takes the config's image_size, the bottom checks it.
    "data2vec-vision": Arch(blocks="encoder.layer", entry=None, masked=False, build=halves_vision.data2vec_vision),
    "beit": Arch(blocks="layers", entry=None, masked=False, build=halves_vision.beit),
    # Models without a transformers config are keyed "<package>.<class>" (see ``model_key``). ResNets and
    # EfficientNets need no entry: the generic rule finds their stage lists, and the split checks itself. The
    # entries below were tested against stand-ins only (the packages do not install here): they check themselves.
    "timm.VisionTransformer": Arch(
        blocks="blocks", entry=None, masked=False, generic=True, build=halves.timm_vit, tested=False,
        source=_STAND_IN),
    "torchvision.VisionTransformer": Arch(
        blocks="encoder.layers", entry=None, masked=False, generic=True, build=halves.torchvision_vit,
        tested=False, source=_STAND_IN),
    "timm.ConvNeXt": Arch(blocks="stages", entry=None, masked=False, generic=True, build=halves.timm_convnext,
                          tested=False, source=_STAND_IN),
}


# The entries this library's tests prove exact, as shipped: lookup trusts an entry only while TABLE holds this
# very object for its key. An entry added or replaced later (TABLE["gemma2"] = TABLE["llama"]) checks itself.
_SHIPPED: dict[str, Arch] = dict(TABLE)
PROVEN: dict[str, Arch] = {k: a for k, a in TABLE.items() if a.tested}

# Families refused by name: no split of theirs can be made exact here, or none is proven yet. (model type: reason)
_TOWERS = ("the dual text-image model runs two towers, each split on its own: lr.recycle(model, at) recycles both "
           "(layer_recycling.dual), lr.split cuts one, e.g. lr.split(model.text_model, at)")
# Dual text-image models: ``dual`` recycles each tower on its own store (model type: {tower: its path}); ``split``
# refuses them (REFUSED), as a split cuts one list of blocks.
DUALS: dict[str, dict[str, str]] = dict.fromkeys(("clip", "siglip"), {"text": "text_model", "image": "vision_model"})
REFUSED: dict[str, str] = {
    "clip": _TOWERS,
    "siglip": _TOWERS,
    "vit_mae": "it shuffles the patches by random noise in every forward and keeps the first (1 - "
               "config.mask_ratio) of them, so an input has no one output to store; with mask_ratio=0.0 it still "
               "returns them in a new random order each call. Recycle the encoder it pre-trained as a ViT "
               "(ViTModel.from_pretrained(name)), which neither masks nor shuffles",
    "funnel": "its blocks pool the padded sequence to half its length between stages and its relative attention "
              "spans the padded length, so the model's own output for an example depends on how far its batch was "
              "padded (about 0.5 on a tiny random model), which no stored state can follow; its decoder also adds "
              "the first block's states to the upsampled last ones",
    "nystromformer": "its Nystrom attention averages segments of exactly config.segment_means_seq_len positions, "
                     "padding included, into landmarks: it runs only on inputs padded to that length, and an "
                     "example's output depends on its padding, which the stored states of the unpadded example "
                     "cannot follow",
}


# Splits ``discover`` found for models outside the table, by the model object: lookup returns them, so a stacked fill
# and the loaders see the split that was checked. Weak keys: a model's entry goes with it.
FOUND: weakref.WeakKeyDictionary[nn.Module, Arch] = weakref.WeakKeyDictionary()


# Families outside the table that ``discover`` finds by running the model and checks at construction, each found and
# exact at every level in tests/test_families.py (model type: the block list found). The split is found anew for
# each model: this lists what the tests saw, for the README.
_LAYERS = ("mixtral", "qwen2_moe", "qwen3_moe", "olmo2", "starcoder2", "cohere2", "smollm3", "glm", "glm4", "gpt_oss",
           "stablelm", "granite", "mamba", "falcon_mamba", "jamba")
_ENCODERS = ("mobilebert", "big_bird", "ernie", "data2vec-text", "megatron-bert", "esm", "roformer",
             "dinov2_with_registers", "mobilevit")
# LeViT's stages are found as its blocks: a level counts stages (its attention subsampling sits inside them).
FOUND_BY_TESTS: dict[str, str] = {
    **dict.fromkeys(_LAYERS, "layers"), **dict.fromkeys(_ENCODERS, "encoder.layer"), "xlnet": "layer",
    **dict.fromkeys(("convnextv2", "resnet", "regnet", "bit"), "encoder.stages"), "efficientnet": "encoder.blocks",
    "levit": "encoder.stages",
}


def model_key(model: nn.Module) -> str:
    """The table key of ``model``: transformers' ``config.model_type``, else ``"<package>.<class name>"``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is not None:
        return model_type
    cls = type(model)
    return f"{cls.__module__.partition('.')[0]}.{cls.__qualname__}"


def lookup(model: nn.Module, blocks: str | list[str] | tuple[str, ...] | None = None) -> Arch:
    """The table entry for ``model``; ``blocks`` names the block list(s) explicitly (an override).

    Only entries this library's tests prove (``PROVEN``) come back with ``tested=True``; a user-added or replaced
    entry, a ``blocks=`` override and the generic rule come back untested, so the split checks itself.

    Raises:
        ValueError: a family refused by name (``REFUSED``), a length-dependent position scheme, a transformers
            model outside the table (the message says how to name its block list), or a ``blocks=`` override
            on a model whose stem the library cannot bypass.
    """
    blocks = _paths(blocks)
    if blocks is None and model in FOUND:  # found by ``discover`` and checked on a synthetic example
        return FOUND[model]
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is not None and isinstance(blocks, tuple):
        raise ValueError(
            f"blocks={list(blocks)}: a transformers model ({type(model).__name__}) has one block list; pass its "
            f"dotted path as a str, e.g. blocks='encoder.layer'"
        )
    key = model_key(model)
    if model_type is not None:
        refuse_unsupported(model)
    if key in TABLE:
        arch = TABLE[key] if _SHIPPED.get(key) is TABLE[key] else dataclasses.replace(
            TABLE[key], tested=False, source="architecture table entry added outside this library's tests")
        if blocks is None or blocks == arch.blocks:
            return arch
        return dataclasses.replace(arch, blocks=blocks, tested=False, build=None, source="blocks= override")
    if model_type in REFUSED and blocks is None:
        raise ValueError(f"{type(model).__name__} (model type {model_type!r}) is refused: {REFUSED[model_type]}")
    if model_type is not None and blocks is None:
        known = ", ".join(sorted(TABLE))
        raise ValueError(
            f"transformers model type {model_type!r} ({type(model).__name__}) is not in layer_recycling's "
            f"architecture table (known: {known}). Name its block list, e.g. "
            f"split(model, at, blocks='encoder.layer') (the split then checks itself against the model), or add "
            f"an entry to layer_recycling.arch.TABLE."
        )
    if model_type is not None:
        return overridden(model.base_model, blocks)
    found = find_blocks(model) if blocks is None else blocks
    source = "generic rule" if blocks is None else "blocks= override"
    return Arch(blocks=found, entry=None, masked=False, generic=True, tested=False, source=source)


def overridden(base: nn.Module, blocks: str) -> Arch:
    """The split of a transformers base model outside the table at the block list ``blocks``: the top receives
    the states through ``inputs_embeds`` (or ``pixel_values`` past a seamed ``embeddings``); norms registered
    after the block list are the tail. Untested: the split checks itself."""
    import inspect

    accepts = inspect.signature(base.forward).parameters
    head = blocks.partition(".")[0]
    children = dict(base.named_children())
    if head not in children:
        raise ValueError(
            f"blocks={blocks!r}: {type(base).__name__} has no child {head!r} (its children: "
            f"{', '.join(children) or 'none'}); pass the dotted path of its list of blocks"
        )
    seam = ("embeddings",) if "embeddings" in children else ()
    common = dict(blocks=blocks, tail=tail_of(base, blocks), tested=False, source="blocks= override")
    if "inputs_embeds" in accepts:
        return Arch(entry="inputs_embeds", seam=seam, **common)
    seam = seam or _only_before(children, head)
    if "pixel_values" in accepts and seam:
        return Arch(entry="pixel_values", seam=seam, keep=_kept(children[seam[0]]), masked=False, **common)
    raise ValueError(
        f"blocks={blocks!r} on {type(base).__name__}: to feed stored states to the blocks above the split, "
        f"layer_recycling looked for a forward argument 'inputs_embeds' (text models), or 'pixel_values' with a "
        f"child 'embeddings' to bypass (vision models), and found neither (its forward takes "
        f"{', '.join(accepts)}; its children: {', '.join(children)}). Add an entry for it to "
        f"layer_recycling.arch.TABLE (an Arch with the right entry, seam and tail), or wrap the model in an "
        f"nn.Module whose forward is stem -> blocks -> head and recycle that (the generic rule)."
    )


def tail_of(base: nn.Module, blocks: str) -> tuple[str, ...]:
    """Norms registered after the block list, at its level and every level above it (a final norm inside the
    encoder, as Megatron-BERT's ``encoder.ln`` and ESM's ``encoder.emb_layer_norm_after``): the top applies them."""
    tail, owner, prefix = [], base, ""
    for part in blocks.split("."):
        names = list(owner._modules)
        after = names[names.index(part) + 1 :] if part in names else []
        tail += [join(prefix, n) for n in after
                 if owner._modules[n] is not None and "norm" in type(owner._modules[n]).__name__.lower()]
        owner, prefix = getattr(owner, part, None), join(prefix, part)
        if owner is None:
            break
    return tuple(tail)


def _only_before(children: dict[str, nn.Module], head: str) -> tuple[str, ...]:
    # A vision stem under another name (ResNet's ``embedder``): the one child registered before the blocks.
    names = list(children)
    return tuple(names[:1]) if names.index(head) == 1 else ()


def _kept(embeddings: nn.Module) -> tuple[str, ...]:
    # ViT-style forwards read embeddings.patch_embeddings' weight dtype before calling the embeddings.
    return ("patch_embeddings",) if hasattr(embeddings, "patch_embeddings") else ()


# Position schemes whose states depend on the length a batch was padded to: a stored state would depend on which
# batch computed it. (rope_type: why)
LENGTH_DEPENDENT = {
    "dynamic": "dynamic NTK rope rescales its frequencies by the longest sequence in the (padded) batch",
    "longrope": "longrope switches between its short and long factors by the (padded) batch length",
}


def refuse_unsupported(model: nn.Module) -> None:
    """Refuse what no split of any transformers family serves: a position scheme that reads the padded length, a
    multiple-choice head."""
    _refuse_length_dependent(model)
    _refuse_multiple_choice(model)


def _refuse_multiple_choice(model: nn.Module) -> None:
    """A multiple-choice head takes (batch, choices, tokens) and flattens it itself: no split serves that."""
    name = type(model).__name__
    if name.endswith("ForMultipleChoice"):
        raise ValueError(
            f"{name} is refused: a multiple-choice head takes inputs of shape (batch, choices, tokens) and flattens "
            f"them itself, which a top fed stored states per example cannot. Recycle "
            f"{name.removesuffix('ForMultipleChoice')}ForSequenceClassification(num_labels=1) instead, one example "
            f"per (question, choice) pair, and take the softmax over each question's choices"
        )


def _refuse_length_dependent(model: nn.Module) -> None:
    for rope in _rope_types(model.config):
        if rope in LENGTH_DEPENDENT:
            raise ValueError(
                f"{type(model).__name__} uses rope_type={rope!r}: {LENGTH_DEPENDENT[rope]}, so a state stored "
                f"from one batch would differ from the same example in another (about 1e-4 on random weights) "
                f"and from the example run alone. layer_recycling refuses it rather than serve those states. "
                f"Fix: use a static rope scaling (rope_type 'linear', 'yarn' or 'llama3') or none, if your "
                f"model tolerates it, or do not recycle this model."
            )


def _rope_types(config) -> set[str]:
    """Every ``rope_type`` in a config's rope settings (flat, or one dict per layer type as Gemma3's)."""
    found: set[str] = set()
    for name in ("rope_parameters", "rope_scaling"):
        value = getattr(config, name, None)
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                kind = item.get("rope_type", item.get("type"))
                found |= {kind} if isinstance(kind, str) else set()
                stack += [v for v in item.values() if isinstance(v, dict)]
    return found


def _paths(blocks: str | list[str] | tuple[str, ...] | None) -> str | tuple[str, ...] | None:
    """``blocks=`` as given: one path is a str, several (stage lists) a tuple."""
    if blocks is None or isinstance(blocks, str):
        return blocks
    paths = tuple(blocks)
    if not paths or not all(isinstance(p, str) for p in paths):
        raise TypeError(f"blocks={blocks!r}: expected a dotted path (str) or a non-empty list of dotted paths")
    return paths[0] if len(paths) == 1 else paths


def families_markdown() -> str:
    """The README's table of families: one row per ``TABLE`` entry, then the refused families with the reason."""
    rows = ["| family (`model_type`, or package.class) | block list | the top gets the states as | trusted |",
            "|---|---|---|---|"]
    for key, a in sorted(TABLE.items()):
        blocks = ", ".join(a.blocks) if isinstance(a.blocks, tuple) else a.blocks
        builder = a.build and f"{a.build.__module__.rpartition('.')[2]}.{a.build.__name__}"
        entry = (f"built by `{builder}`" if a.build else f"`{a.entry}`" if a.entry
                 else "its first argument")
        trust = "proven by the tests" if PROVEN.get(key) is a else "checks itself against the model"
        rows.append(f"| `{key}` | `{blocks}` | {entry} | {trust} |")
    rows += [f"| `{key}` (dual) | each tower's own (`{'`, `'.join(paths.values())}`) | each tower's own, from its own "
             f"store (`dual`) | proven by the tests |" for key, paths in sorted(DUALS.items())]
    rows += ["", "Not in the table: found by running the model on an example made up from its config, then checked "
             "on it at construction and on its first batches (the tests find these exact at every level).", "",
             "| family (`model_type`) | block list found | trusted |", "|---|---|---|"]
    rows += [f"| `{key}` | `{blocks}` | found and checked |" for key, blocks in sorted(FOUND_BY_TESTS.items())]
    rows += ["", "| refused (`model_type`) | why |", "|---|---|"]
    rows += [f"| `{key}` | {why} |" for key, why in sorted(REFUSED.items()) if key not in DUALS]
    return "\n".join(rows)
