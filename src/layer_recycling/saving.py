"""Saving a recycled model as the whole model it came from: what ``from_pretrained`` and trainers load.

Free functions of a recycled model (``lr.recycle(...)``), as PEFT's ``get_peft_model_state_dict`` is: the
module's own ``state_dict()`` stays torch's (names under ``bottom.`` and ``top.``, what a parent module, DDP or
Lightning save and restore). The user's model (``rec.source``) shares every parameter with the two halves, so
its state dict is the trained model, except for head parameters that ``untie=True`` copied into the top:
those are put back in.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import adapters
from .surgery import join


def recycled_parts(rec: nn.Module) -> dict[str, nn.Module]:
    """{path in the user's model: recycled model}: ``{"": rec}``, or each tower of a dual model (``dual.parts``)."""
    return getattr(rec, "parts", None) or {"": rec}


def untied_parameters(rec: nn.Module) -> dict[str, torch.nn.Parameter]:
    """{name in the model: the top's own trained copy} for parameters that ``untie=True`` copied."""
    found = {}
    for path, part in recycled_parts(rec).items():
        top = dict(part.top.model.named_parameters(remove_duplicate=False))
        found.update({join(path, name): top[name] for name in part.untied if name in top})
    return found


def model_state_dict(rec: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict in its own names (what ``from_pretrained`` checkpoints hold), trained top
    included; each shared tensor once (safetensors refuses twins)."""
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


def load_model_state_dict(rec: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> Any:
    """Load a whole model's state dict (as ``model_state_dict`` writes it, or a ``from_pretrained`` checkpoint)
    into the model and the top's copies.

    Raises:
        RuntimeError: ``state`` holds other bottom weights than the model's (its stored states would be stale).
    """
    bottom = {id(t) for part in recycled_parts(rec).values() for t in part.bottom.state_dict(keep_vars=True).values()}
    copies = untied_parameters(rec)  # a head tied to the bottom's embeddings, which the top trains as its own copy
    own = {n: t for n, t in rec.source.state_dict(keep_vars=True).items() if id(t) in bottom and n not in copies}
    refuse_other_bottom(own, state, "")
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
            f"expected the whole model's state dict (lr.model_state_dict(rec) or a from_pretrained checkpoint)"
        )
    return result


# ---- hooks of the module's own state_dict: each tensor once, and the bottom never replaced ------------------------


def aliases(rec: nn.Module) -> dict[str, str]:
    """{later name: first name} of tensors the module holds under several names (the top keeps stem modules it
    never runs, and a head tied to the embeddings: one tensor, in the bottom and the top)."""
    with _unhooked(rec):
        state = rec.state_dict(keep_vars=True)
    first: dict[int, str] = {}
    return {n: first[id(t)] for n, t in state.items() if first.setdefault(id(t), n) != n}


def drop_aliases(rec: nn.Module, state: dict[str, torch.Tensor], prefix: str, _metadata: Any) -> None:
    """``state_dict`` post-hook: each tensor once, under its first name (safetensors refuses shared tensors)."""
    if not getattr(rec, "_unhooked", False):
        for name in aliases(rec):
            state.pop(prefix + name, None)


def restore_aliases(rec: nn.Module, state: dict[str, torch.Tensor], prefix: str, *_: Any) -> None:
    """``load_state_dict`` pre-hook: the names ``drop_aliases`` left out load from their tensor's first name."""
    for name, first in aliases(rec).items():
        if prefix + first in state and prefix + name not in state:
            state[prefix + name] = state[prefix + first]


def check_bottom_unchanged(rec: nn.Module, state: dict[str, torch.Tensor], prefix: str, *_: Any) -> None:
    """``load_state_dict`` pre-hook of a recycled model: refuse a state dict whose ``bottom.`` weights differ."""
    refuse_other_bottom(rec.bottom.state_dict(keep_vars=True), state, prefix + "bottom.")


def check_bottoms_unchanged(rec: nn.Module, state: dict[str, torch.Tensor], prefix: str) -> None:
    """``check_bottom_unchanged`` on each recycled part of ``rec`` (a dual model's towers), in ``rec``'s names."""
    names = {id(m): n for n, m in rec.named_modules()}
    for part in recycled_parts(rec).values():
        path = names[id(part)]
        check_bottom_unchanged(part, state, prefix + (path + "." if path else ""))


@contextlib.contextmanager
def _unhooked(rec: nn.Module):
    object.__setattr__(rec, "_unhooked", True)
    try:
        yield
    finally:
        object.__setattr__(rec, "_unhooked", False)


def refuse_other_bottom(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], prefix: str) -> None:
    """Refuse ``state`` if it would change a weight of the frozen bottom (``own``, named under ``prefix``): the
    store holds states that bottom computed, and would serve them for a different one."""
    changed = [n for n, t in own.items() if prefix + n in state and not _same(state[prefix + n], t)]
    if changed:
        raise RuntimeError(
            f"this state dict holds other weights for the frozen bottom ({', '.join(changed[:3])}"
            f"{', ...' if len(changed) > 3 else ''}) than the recycled model has: its store holds states of the "
            f"old bottom and would serve them for the new one. Load the weights into your model before "
            f"lr.recycle(model, ...) (the store then refuses stale states by fingerprint), or load only the top: "
            f"rec.top.load_state_dict(...)"
        )


def _same(new: torch.Tensor, old: torch.Tensor) -> bool:
    return new.shape == old.shape and torch.equal(new.detach().to(device=old.device, dtype=old.dtype), old.detach())


def _tied(rec: nn.Module, name: str) -> bool:
    tied = getattr(rec.source, "all_tied_weights_keys", None) or getattr(rec.source, "_tied_weights_keys", None)
    return bool(tied) and name in tied


def save_pretrained(rec: nn.Module, directory: str | os.PathLike, **kwargs: Any) -> Path:
    """Write the whole model as ``from_pretrained`` expects (LoRA adapters merged into their layers' weights),
    and ``recycling_config.json`` beside it."""
    source = rec.source
    if not hasattr(source, "save_pretrained"):
        raise TypeError(
            f"{type(source).__name__} has no save_pretrained (not a transformers model); save its weights with "
            f"torch.save(rec.state_dict(), path) and its recycling options with rec.recycle_config.save_pretrained(dir)"
        )
    config = getattr(source, "config", None)
    untied = bool(untied_parameters(rec)) and config is not None and getattr(config, "tie_word_embeddings", False)
    if untied and kwargs.get("push_to_hub"):
        raise ValueError("save_pretrained(push_to_hub=True) with an untied head: the folder's config is rewritten "
                         "after the model's save_pretrained writes it (the head must load untied), so it would push "
                         "the tied one. Save to a folder, then upload it (huggingface_hub.upload_folder)")
    state = adapters.merged_state(source, model_state_dict(rec))  # LoRA layers written merged, in plain names
    source.save_pretrained(directory, state_dict=state, **kwargs)
    if untied and kwargs.get("is_main_process", True):  # the saved head is the top's own copy: it must load untied
        saved = copy.deepcopy(config)  # the user's config stays as it is
        saved.tie_word_embeddings = False
        saved.save_pretrained(directory)
    parts = recycled_parts(rec)
    recorded = {path: _recorded(part) for path, part in parts.items()}
    rec.recycle_config.save_pretrained(directory, **(recorded[""] if "" in parts else {"towers": recorded}))
    return Path(directory)


def _recorded(rec: nn.Module) -> dict[str, Any]:
    """What ``recycling_config.json`` records of one recycled model: its split, codec and fingerprint."""
    return dict(at_blocks=rec.at, num_layers=rec.num_layers, level=rec.level, block_path=rec.arch.blocks,
                codec=rec.store.codec, fingerprint=rec.fingerprint.parts)
