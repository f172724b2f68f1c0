"""PEFT with a recycled model: recycle a PEFT model, or add LoRA adapters to the top of a recycled one.

Either way only adapters above the cut (and the task head) train; adapters below it are frozen with the bottom.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


def add_lora(rec: nn.Module, r: int = 8, alpha: int | None = None, target_modules: Sequence[str] | None = None,
             dropout: float = 0.0) -> nn.Module:
    """LoRA adapters on the top's blocks; afterwards only they and the task head train (the paper's best variant).

    The adapters go into the top's blocks, which are your model's own modules (as PEFT's injection does), so
    your model carries them, and ``lr.model_state_dict(rec)`` and trainer checkpoints keep them apart (they load
    back into a model with adapters); ``rec.save_pretrained`` writes them merged into the weights, a folder that
    ``from_pretrained`` of the model's class loads as the fine-tuned model. ``target_modules`` defaults to PEFT's
    choice for the model type. Returns ``rec``.

    Raises:
        ValueError: the model type has no default targets and none were given.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TARGETS

    model = rec.top.model
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = target_modules or TARGETS.get(model_type)
    if not targets:
        raise ValueError(
            f"add_lora: no default LoRA target modules for model type {model_type!r}; pass target_modules=[...] "
            f"naming the top's linear layers (e.g. ['query', 'value'])"
        )
    config = LoraConfig(r=r, lora_alpha=alpha or 2 * r, target_modules=list(targets), lora_dropout=dropout)
    inject_adapter_in_model(config, model)
    prefix, bottom = getattr(model, "base_model_prefix", ""), {id(p) for p in rec.bottom.parameters()}
    for name, p in model.named_parameters():
        head = bool(prefix) and hasattr(model, prefix) and not name.startswith(prefix + ".")  # a base model has none
        p.requires_grad_(("lora_" in name or head) and id(p) not in bottom)
    return rec


def merged_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (``model``'s state dict) with each PEFT LoRA layer's active adapters merged into its base layer's
    weight, under the plain layer's names: what ``from_pretrained`` of the model's class loads.

    Raises:
        TypeError: an adapter layer that is not LoRA (no merge rule here).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = {n: m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
    out = dict(state)
    for name, layer in layers.items():
        if not hasattr(layer, "get_delta_weight") or not hasattr(layer, "lora_A"):
            raise TypeError(
                f"{name} is a {type(layer).__name__} adapter: save_pretrained merges LoRA adapters only. Merge it "
                f"yourself (peft's merge_and_unload) before saving, or save lr.model_state_dict(rec)"
            )
        prefix = f"{name}." if name else ""
        under = [k for k in out if k.startswith(prefix)]
        base = {k[len(prefix + "base_layer.") :]: out[k] for k in under if k.startswith(prefix + "base_layer.")}
        for k in under:
            del out[k]
        weight = layer.get_base_layer().weight.detach()
        if not layer.merged:  # merged adapters are in the base weight already
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
        out.update({prefix + k: v for k, v in base.items()})
        out[prefix + "weight"] = weight
    return out


def unwrap(model: Any) -> tuple[Any, dict[int, str]]:
    """(the model a PEFT model wraps, {id: name} of its trainable adapter weights), or (``model``, {})."""
    if not (hasattr(model, "get_base_model") and hasattr(model, "peft_config")):
        return model, {}
    base = model.get_base_model()
    return base, {id(p): n for n, p in base.named_parameters() if p.requires_grad and "lora_" in n}


def warn_frozen(adapters: dict[int, str], bottom: Any) -> None:
    """Name the adapter weights that fell below the cut: they are frozen with the bottom."""
    import warnings

    below = [adapters[id(p)] for p in bottom.parameters() if id(p) in adapters]
    if below:
        warnings.warn(
            f"{len(below)} LoRA adapter weights sit in the recycled bottom and are frozen with it "
            f"({', '.join(below[:3])}{', ...' if len(below) > 3 else ''}): they keep their values and are part of "
            f"the fingerprint. Put adapters only above the cut (LoraConfig(layers_to_transform=...)) to train all.",
            stacklevel=4,
        )
