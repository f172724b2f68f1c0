"""Saving a recycled model as the whole model it came from: what ``from_pretrained`` and trainers load.

The user's model (``rec.source``) shares every parameter with the two halves, so its state dict is the
trained model, except for head parameters that ``untie=True`` copied into the top: those are put back in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .model import Recycled


def untied_parameters(rec: Recycled) -> dict[str, torch.nn.Parameter]:
    """{name in the model: the top's own trained copy} for parameters that ``untie=True`` copied."""
    top = dict(rec.top.model.named_parameters(remove_duplicate=False))
    return {name: top[name] for name in rec.untied if name in top}


def state_dict(rec: Recycled) -> dict[str, torch.Tensor]:
    """The whole model's state dict (its own names), trained top included; each shared tensor once."""
    state = dict(rec.source.state_dict())
    state.update({n: p.detach() for n, p in untied_parameters(rec).items()})
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, tensor in state.items():  # tied tensors (an LM head on the embeddings) once: safetensors refuses twins
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if where not in seen:
            seen.add(where)
            out[name] = tensor
    return out


def load_state_dict(rec: Recycled, state: dict[str, torch.Tensor], strict: bool) -> Any:
    """Load a whole model's state dict (as ``state_dict`` writes it) into the model and the top's copies."""
    copies = untied_parameters(rec)
    with torch.no_grad():
        for name, param in copies.items():
            if name in state:
                param.copy_(state[name])
    rest = {k: v for k, v in state.items() if k not in copies}
    result = rec.source.load_state_dict(rest, strict=False)
    missing = [k for k in result.missing_keys if k not in copies and not _tied(rec, k)]
    if strict and (missing or result.unexpected_keys):
        raise RuntimeError(
            f"loading a recycled model's state dict: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}; "
            f"expected the whole model's state dict (rec.state_dict() or a from_pretrained checkpoint)"
        )
    return result


def _tied(rec: Recycled, name: str) -> bool:
    tied = getattr(rec.source, "all_tied_weights_keys", None) or getattr(rec.source, "_tied_weights_keys", None)
    return bool(tied) and name in tied


def save_pretrained(rec: Recycled, directory: str | os.PathLike, **kwargs: Any) -> Path:
    """Write the whole model as ``from_pretrained`` expects, and ``recycling_config.json`` beside it."""
    source = rec.source
    if not hasattr(source, "save_pretrained"):
        raise TypeError(
            f"{type(source).__name__} has no save_pretrained (not a transformers model); save its weights with "
            f"torch.save(rec.state_dict(), path) and its recycling options with rec.config.save_pretrained(dir)"
        )
    config = getattr(source, "config", None)
    untied = bool(rec.untied) and config is not None and getattr(config, "tie_word_embeddings", False)
    if untied:  # the saved head is the top's own copy: it must load untied
        config.tie_word_embeddings = False
    try:
        source.save_pretrained(directory, state_dict=state_dict(rec), **kwargs)
    finally:
        if untied:
            config.tie_word_embeddings = True
    rec.config.save_pretrained(directory, at_blocks=rec.at, num_layers=rec.num_layers, level=rec.level,
                               block_path=rec.arch.blocks, codec=rec.store.codec, fingerprint=rec.fingerprint.parts)
    return Path(directory)
