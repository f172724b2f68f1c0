"""Adapter-wrapped models, asked duck-typed: the model a PEFT model wraps, adapters below the cut, LoRA merged.

The core never imports PEFT (nor ``integrations``): a PEFT model and its tuner layers are recognised by the
methods PEFT gives them (``get_base_model``, ``get_base_layer``, ``get_delta_weight``), so a model without
adapters costs nothing and PEFT need not be installed. ``integrations/peft.py`` adds LoRA to a recycled model.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn


def unwrap(model: Any) -> tuple[Any, dict[int, str]]:
    """(the model a PEFT model wraps, {id: name} of its trainable adapter weights), or (``model``, {})."""
    if not (hasattr(model, "get_base_model") and hasattr(model, "peft_config")):
        return model, {}
    base = model.get_base_model()
    return base, {id(p): n for n, p in base.named_parameters() if p.requires_grad and "lora_" in n}


def warn_frozen(adapters: dict[int, str], bottom: nn.Module) -> None:
    """Name the adapter weights that fell below the cut: they are frozen with the bottom."""
    below = [adapters[id(p)] for p in bottom.parameters() if id(p) in adapters]
    if below:
        warnings.warn(
            f"{len(below)} LoRA adapter weights sit in the recycled bottom and are frozen with it "
            f"({', '.join(below[:3])}{', ...' if len(below) > 3 else ''}): they keep their values and are part of "
            f"the fingerprint. Put adapters only above the cut (LoraConfig(layers_to_transform=...)) to train all.",
            stacklevel=4,
        )


def tuner_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{name: layer} of the PEFT tuner layers in ``model`` (modules wrapping a base layer with adapters)."""
    return {n: m for n, m in model.named_modules()
            if callable(getattr(m, "get_base_layer", None)) and hasattr(m, "active_adapters") and hasattr(m, "merged")}


def merged_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (``model``'s state dict) with each LoRA layer's active adapters merged into its base layer's
    weight, under the plain layer's names: what ``from_pretrained`` of the model's class loads. ``state`` itself
    when ``model`` holds no adapters.

    Raises:
        TypeError: an adapter layer that is not LoRA (no merge rule here).
    """
    out = dict(state)
    for name, layer in tuner_layers(model).items():
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
