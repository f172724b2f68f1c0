"""PEFT with a recycled model: add LoRA adapters to the top of a recycled one.

Only adapters above the cut (and the task head) train. A PEFT model recycles without this module: the core asks
it duck-typed questions (``adapters.py``), which also merge LoRA layers when the model is saved.
"""

from __future__ import annotations

from typing import Sequence

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
