"""The pooled level: the store holds one vector per input (the model's pooled output), and a head trains on it.

``recycle(model, at="pooled")`` freezes the whole encoder and its pooling (a text model's tokens pooled as its
sentence-transformers ``1_Pooling`` says, an image model's pooled features) and trains only what comes after:
a head you pass, by default a ``SkipConnectionHead`` that starts as the identity, so the untrained model gives the
pretrained embedding. This is the head-only setting of Quaterion (the encoder's pooled output cached, an
``EncoderHead`` trained on it), and the store holds one vector an input where the other levels hold one per token.

A pooled state is a sequence of one state per input: text inputs of any length are stored as one position each,
as a clip's samples are stored as its frames (``Arch.frames``), so the store, fill, loader and serving run as at any
level. ``Pooled`` is the plain model the pooled level recycles (encoder, then head): run as it is, with the
encoder frozen, it gives what the recycled one gives.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .arch import Arch
from .halves import Top
from .split import Split

__all__ = ["POOLINGS", "ClassifierHead", "Pooled", "SkipConnectionHead", "pool", "pooled"]

POOLINGS = ("cls", "mean", "max", "lasttoken")  # as sentence-transformers' ``Pooling`` names them
LEVEL = "pooled"  # recycle(model, at=LEVEL)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(b, t, h) token states -> (b, h) as sentence-transformers' ``Pooling`` does for ``pooling``: the first token
    (cls), the mean or the max over real tokens, or the last real token (either padding side)."""
    if pooling == "cls":
        return hidden[:, 0]
    real = mask.bool().unsqueeze(-1)
    if pooling == "max":
        return hidden.masked_fill(~real, torch.finfo(hidden.dtype).min).amax(dim=1)
    if pooling == "lasttoken":  # the highest position holding a real token
        last = (mask.bool() * torch.arange(1, mask.shape[1] + 1, device=mask.device)).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = real.to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


class SkipConnectionHead(nn.Module):
    """``x + sigmoid(gate) * (W x + b)``: Quaterion's skip-connection head (a gate vector and one linear layer added
    to the input). ``W`` and ``b`` start at zero, so the untrained head is exactly the identity (Quaterion starts them
    random and the gate closed, near the identity). Linear in ``x``: ``as_linear`` folds it into one ``nn.Linear``."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(dim))
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.sigmoid(self.gate) * self.fc(x)

    @torch.no_grad()
    def as_linear(self) -> nn.Linear:
        """One ``nn.Linear`` computing the same map: weight ``I + diag(sigmoid(gate)) W``, bias ``sigmoid(gate) b``."""
        g = torch.sigmoid(self.gate)
        out = nn.Linear(self.fc.in_features, self.fc.out_features).to(self.fc.weight)
        out.weight.copy_(torch.eye(self.fc.in_features, dtype=g.dtype, device=g.device) + g[:, None] * self.fc.weight)
        out.bias.copy_(g * self.fc.bias)
        return out


@dataclasses.dataclass
class HeadOutput:
    """What ``ClassifierHead`` returns, named as transformers' classifiers name it."""

    logits: torch.Tensor  # (b, num_labels)
    loss: torch.Tensor | None = None  # mean cross-entropy, when labels were given


class ClassifierHead(nn.Module):
    """A classifier on pooled vectors: ``head`` (default a ``SkipConnectionHead``) then a linear layer to
    ``num_labels``; ``labels`` give the cross-entropy loss."""

    def __init__(self, dim: int, num_labels: int, head: nn.Module | None = None):
        super().__init__()
        self.head = head if head is not None else SkipConnectionHead(dim)
        self.classifier = nn.Linear(dim, num_labels)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> HeadOutput:
        logits = self.classifier(self.head(x))
        return HeadOutput(logits, F.cross_entropy(logits, labels) if labels is not None else None)


class TextPooler(nn.Module):
    """A transformers text model's base model, its last hidden state pooled: model inputs -> (b, h)."""

    def __init__(self, model: nn.Module, pooling: str):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}: expected one of {list(POOLINGS)} (as the model's 1_Pooling says)")
        self.base, self.pooling = model.base_model, pooling
        self._extra = {"use_cache": False} if "use_cache" in inspect.signature(self.base.forward).parameters else {}

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.base(**inputs, **self._extra)[0]
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        return pool(hidden, mask, self.pooling)


class Features(nn.Module):
    """Any model whose output is one vector per input: a tensor (b, d), or named outputs holding ``pooler_output``
    or ``logits`` (an image model with no classifier)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(**inputs)
        for name in ("pooler_output", "logits"):
            if getattr(out, name, None) is not None:
                out = getattr(out, name)
                break
        out = out if isinstance(out, torch.Tensor) else out[0]
        if out.dim() != 2:
            raise ValueError(f"{type(self.model).__name__} returned a {tuple(out.shape)} output; the pooled level "
                             f"stores one vector (b, d) per input: pass a model that pools (an image model without its "
                             f"classifier), or wrap it in layer_recycling.pooled.Pooled with an encoder that pools")
        return out


class Pooled(nn.Module):
    """The plain model the pooled level recycles: ``encoder`` (model inputs -> one vector (b, d) per input), then
    ``head`` (vectors -> the output; labels and options go to it). Recycled at ``"pooled"``, the encoder is the
    frozen bottom and the head the top.

    Args:
        encoder: model inputs -> (b, d); ``TextPooler`` for a transformers text model, ``Features`` for a model
            whose output is pooled already.
        head: (b, d) -> output; trains.
        input_names: the model inputs the encoder takes (they key the store).
        config: the encoder's transformers config (its pad id; fields that decide the bottom), or None.
        masked: inputs are token sequences with an attention mask (text); False: fixed-size inputs (images).
        pooling: how the encoder pools, in words (kept in the store's fingerprint).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, input_names: tuple[str, ...], *, config: Any = None,
                 masked: bool = True, pooling: str = "pooled output"):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.input_names, self.masked, self.pooling = tuple(input_names), masked, pooling
        self.config = config

    def forward(self, **kwargs: Any) -> Any:
        inputs = {n: kwargs.pop(n) for n in self.input_names if n in kwargs}
        return self.head(self.encoder(**inputs), **kwargs)

    def get_input_embeddings(self) -> nn.Module | None:
        """The encoder's token embedding (token ids are checked against its size), if it has one."""
        for module in self.encoder.modules():
            get = getattr(module, "get_input_embeddings", None)
            if module is not self and callable(get):
                try:
                    return get()
                except (NotImplementedError, AttributeError):
                    return None
        return None


class PooledBottom(nn.Module):
    """The frozen encoder: model inputs -> (b, 1, d) for token sequences (one state stored per input), else (b, d)."""

    def __init__(self, encoder: nn.Module, masked: bool):
        super().__init__()
        self.encoder, self.masked = encoder, masked

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        out = self.encoder(**inputs)
        return out[:, None] if self.masked else out


class PooledTop(nn.Module):
    """The head fed stored vectors: (states (b, 1, d) or (b, d), attention_mask) -> the head's output. Options the
    head does not take (``return_dict``, which serving may pass) are dropped; labels go to it."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head
        params = inspect.signature(head.forward).parameters
        self._takes = None if any(p.kind == p.VAR_KEYWORD for p in params.values()) else set(params)

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if self._takes is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in self._takes or k == "labels"}
        return self.head(states[:, 0] if states.dim() == 3 else states, **kwargs)


def _one(model: nn.Module, n: int) -> int:
    return 1  # one stored state an input, whatever its length


def split(model: Pooled) -> Split:
    """The pooled level's halves: the encoder frozen below, the head above (``at`` 1 of 1: the whole encoder)."""
    arch = Arch(blocks=f"the pooled output ({model.pooling})", entry=None, masked=model.masked,
                frames=_one if model.masked else None, source="the pooled level")
    return Split(bottom=PooledBottom(model.encoder, model.masked), top=Top(PooledTop(model.head), None), at=1,
                 num_layers=1, arch=arch)


def pooled(model: nn.Module, head: nn.Module | None = None, pooling: str | None = None) -> Pooled:
    """``model`` cut at its pooled output, ``head`` on it (default ``SkipConnectionHead`` of the pooled width).

    A transformers text model (it takes ``input_ids``) is pooled as ``pooling`` says (default ``"mean"``; one of
    ``POOLINGS``); any other model must give one vector per input already (an image model without its classifier,
    or a model with a ``pooler_output``). A ``Pooled`` is returned as it is.

    Raises:
        ValueError: a pooling not in ``POOLINGS``, a pooling for a model that pools itself, or no ``head`` where the
            pooled width cannot be read from the model's config.
    """
    if isinstance(model, Pooled):
        if head is not None or pooling is not None:
            raise ValueError("a Pooled model has its head and pooling already; pass head= and pooling= to Pooled()")
        return model
    from .pipeline import input_names_of

    if hasattr(model, "get_text_features") and hasattr(model, "get_image_features"):
        raise ValueError(f"{type(model).__name__} is a dual text-image model, which has no one pooled output; recycle "
                         f"one tower at 'pooled' (e.g. lr.recycle(model.text_model, at='pooled', head=...))")
    config = getattr(model, "config", None)
    text = config is not None and hasattr(model, "base_model") and "input_ids" in input_names_of(model, False)
    if text:
        encoder, names, how = TextPooler(model, pooling or "mean"), input_names_of(model, False), pooling or "mean"
    elif pooling is not None:
        raise ValueError(f"pooling={pooling!r} is for token sequences; {type(model).__name__} gives one vector per "
                         f"input itself: leave pooling out")
    else:
        names = input_names_of(model, generic=config is None)
        encoder, how = Features(model), "the model's own"
    if head is None:
        dim = getattr(config, "hidden_size", None)
        if not isinstance(dim, int):
            raise ValueError(f"{type(model).__name__}: the pooled width is not in its config (hidden_size), so no default "
                             f"head can be made; pass head= (e.g. layer_recycling.pooled.SkipConnectionHead(width))")
        head = SkipConnectionHead(dim)
    return Pooled(encoder, head, names, config=config, masked=text, pooling=how)
