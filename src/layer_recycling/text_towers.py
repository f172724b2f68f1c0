"""Halves of the CLIP and SigLIP text towers, whose pooled output is read at a token that a top fed states cannot find.

CLIP pools the end-of-text token, found in ``input_ids`` (the largest id, or the first ``eos_token_id``, as its
config says). The top never receives the ids, so the bottom marks that token in the states it returns: one more
feature, 0 on every token but the pooled one, where it holds the row's largest magnitude plus one (so int8 keeps
it exactly among a row's 4 largest, and float16 keeps it non-zero). The top reads the mark, drops the feature and
hands the model ids that point at the same token, so its own forward pools it (with a projection head or
without). SigLIP pools the last token of the batch, padding included: fed a right-padded batch, the top pools each
row's last real token, as the example run alone does.
"""

from __future__ import annotations

import torch
from torch import nn

from .halves import Bottom, Built
from .surgery import join, replace, resolve_at


class StatesIn(nn.Module):
    """Stands in for the text embeddings in the top: returns the states, which the top passes as ``position_ids``
    (the one argument these forwards hand to their embeddings untouched; they take no ``inputs_embeds``)."""

    def forward(self, input_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        return position_ids


def _cut(model: nn.Module, at: int | float, tail: tuple[str, ...]) -> tuple[nn.Module, nn.Module, int, int]:
    """(bottom base: stem and blocks before k, ``tail`` modules blanked; top model: blocks from k, the stem a
    ``StatesIn``; k; blocks in all) over shallow copies of ``model`` (the tower, or a head holding it)."""
    base = model.base_model
    prefix = "" if base is model else model.base_model_prefix
    layers = base.encoder.layers
    k = resolve_at(at, len(layers))
    below = replace(base, {"encoder.layers": nn.ModuleList(list(layers)[:k]), **{t: nn.Identity() for t in tail}})
    above = replace(model, {join(prefix, "embeddings"): StatesIn(),
                            join(prefix, "encoder.layers"): nn.ModuleList(list(layers)[k:])})
    return below, above, k, len(layers)


# ---- CLIP: the end-of-text token, found in input_ids -------------------------------------------------------------


def _eos_of(config) -> int:
    eos = getattr(config, "eos_token_id", None)
    if not isinstance(eos, int) or isinstance(eos, bool):
        raise ValueError(
            f"{type(config).__name__}.eos_token_id is {eos!r}: CLIP's text model pools the end-of-text token it finds "
            f"by that id (an int), so a split cannot mark it. Set config.eos_token_id to the tokenizer's end-of-text "
            f"id (49407 for OpenAI's CLIP; 2 picks the largest id, as older checkpoints do)"
        )
    return eos


def clip_pooled_index(input_ids: torch.Tensor, mask: torch.Tensor | None, eos: int) -> torch.Tensor:
    """(b,) the token CLIPTextModel pools in each right-padded row, among its real tokens only: the first largest
    id when ``eos`` is 2 (older configs), else the first ``eos`` (0 when there is none), as its forward picks it."""
    ids = input_ids.int()
    real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    if eos == 2:
        return ids.masked_fill(~real, torch.iinfo(ids.dtype).min).argmax(dim=-1)
    return ((ids == eos) & real).int().argmax(dim=-1)


class ClipTextBottom(nn.Module):
    """Stem and first k blocks of CLIP's text model: (ids (b, t), mask (b, t)) -> states (b, t, h + 1), the last
    feature marking the token the model pools."""

    def __init__(self, base: nn.Module, eos: int):
        super().__init__()
        self.run, self.eos = Bottom(base), eos

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        states = self.run(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        rows = torch.arange(states.shape[0], device=states.device)
        pooled = clip_pooled_index(input_ids, attention_mask, self.eos).to(states.device)
        mark = torch.zeros(states.shape[:2], dtype=states.dtype, device=states.device)
        mark[rows, pooled] = states[rows, pooled].abs().amax(dim=-1) + 1  # the row's largest magnitude: int8 keeps it
        return torch.cat([states, mark[..., None]], dim=-1)


class ClipTextTop(nn.Module):
    """CLIP's text model (or a head holding it) above block k: (states (b, t, h + 1) with the pooled token marked,
    mask (b, t)) -> the model's output, pooled at the marked token by its own forward."""

    def __init__(self, model: nn.Module, eos: int):
        super().__init__()
        self.model, self.eos = model, eos

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        marked = states[..., -1] != 0  # (b, t): one token per row
        # ids the model's own rule picks the marked token by: the first largest (eos 2) or the first eos
        ids = torch.where(marked, self.eos, self.eos - 1)
        return self.model(input_ids=ids, attention_mask=attention_mask, position_ids=states[..., :-1], **kwargs)


def clip_text(model: nn.Module, at: int | float) -> Built:
    """CLIPTextModel or CLIPTextModelWithProjection cut at block ``at``."""
    eos = _eos_of(model.config)
    below, above, k, n = _cut(model, at, ("final_layer_norm",))
    return ClipTextBottom(below, eos), ClipTextTop(above, eos), k, n


# ---- SigLIP: the last token of the batch --------------------------------------------------------------------------


class SiglipTextTop(nn.Module):
    """SigLIP's text model above block k: (states (b, t, h), mask (b, t)) -> its output, pooled at each row's last
    real token (the model reads the batch's last column, which in a right-padded batch may be padding)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        wants_tuple = kwargs.pop("return_dict", True) is False
        ids = torch.zeros(states.shape[:2], dtype=torch.long, device=states.device)  # read by no module
        out = self.model(input_ids=ids, attention_mask=attention_mask, position_ids=states, return_dict=True, **kwargs)
        b, t = states.shape[:2]
        last = (torch.full((b,), t - 1, device=states.device) if attention_mask is None
                else attention_mask.to(states.device).long().sum(dim=1) - 1).clamp(min=0)
        out.pooler_output = self.model.head(out.last_hidden_state[torch.arange(b, device=states.device), last])
        return out.to_tuple() if wants_tuple else out


def siglip_text(model: nn.Module, at: int | float) -> Built:
    """SiglipTextModel cut at block ``at``: the bottom stops before its final norm and pooling head."""
    below, above, k, n = _cut(model, at, ("final_layer_norm", "head"))
    return Bottom(below), SiglipTextTop(above), k, n
