"""PEFT with a recycled model: recycle a PEFT model, or add LoRA adapters to the top of a recycled one.

Either way only adapters above the cut (and the task head) train; adapters below it are frozen with the bottom.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn


def add_lora(rec: nn.Module, r: int = 8, alpha: int | None = None, target_modules: Sequence[str] | None = None,
             dropout: float = 0.0) -> nn.Module:
    """LoRA adapters on the top's blocks; afterwards only they and the task head train (the paper's best variant).

    The adapters go into the top's blocks, which are your model's own modules (as PEFT's injection does), so
    ``rec.save_pretrained`` and your model both carry them. ``target_modules`` defaults to PEFT's choice for the
    model type. Returns ``rec``.

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
