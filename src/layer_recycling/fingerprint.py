"""The fingerprint of a bottom: a digest of everything that decides its output, kept as named parts.

Stores record the parts, so a mismatch can say *what* differs (weights, split, config, preprocessing, codec).
Nothing in the top takes part: training the top never invalidates a cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from torch import nn

from .keys import DIGEST_SIZE, digest

FORMAT_VERSION = 2  # 2: readable parts (model class, config fields, split); the stored form is "codec"

# Config fields that only shape the head or record provenance: changing them leaves the bottom's output alone.
_HEAD_ONLY_CONFIG = {
    "_name_or_path", "architectures", "transformers_version", "id2label", "label2id", "num_labels",
    "problem_type", "classifier_dropout", "finetuning_task", "output_hidden_states", "output_attentions",
    "return_dict", "use_cache", "_attn_implementation_autoset", "tie_word_embeddings",
}


class FingerprintMismatch(ValueError):
    """A store holds states made by a different bottom; serving them would be wrong."""


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """Named parts of what decides the bottom's output (readable where short), and their combined ``digest``."""

    parts: dict[str, str]

    @property
    def digest(self) -> str:
        """One hex digest of all the parts."""
        return digest(self.parts)

    def check(self, recorded: dict[str, str], where: str) -> None:
        """Raise ``FingerprintMismatch`` saying in words how ``recorded`` differs from this one."""
        names = sorted(set(recorded) | set(self.parts))
        differ = [n for n in names if recorded.get(n) != self.parts.get(n)]
        if differ:
            detail = "; ".join(explain(n, recorded.get(n), self.parts.get(n)) for n in differ)
            raise FingerprintMismatch(
                f"{where} was filled by a different bottom ({', '.join(differ)} differ: {detail}). Its entries "
                f"would be wrong for this model. Use a new store (or a new directory), or load the model, split "
                f"and preprocessing that filled it."
            )


def explain(part: str, stored: str | None, now: str | None) -> str:
    """One part's difference in words: config fields that differ, readable values, or digest prefixes."""
    if part == "config" and stored and now and stored.startswith("{") and now.startswith("{"):
        a, b = json.loads(stored), json.loads(now)
        fields = [f"{k}: {a.get(k, '-')} != {b.get(k, '-')}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        return "config field " + ", ".join(fields[:5]) + (f" (+{len(fields) - 5} more)" if len(fields) > 5 else "")
    if _readable(stored) and _readable(now):
        return f"{part}: stored {stored}; now {now}"
    return f"{part}: stored {(stored or '-')[:12]} != now {(now or '-')[:12]}"


def _readable(value: str | None) -> bool:
    return value is not None and len(value) <= 80 and not (len(value) >= 32 and all(c in "0123456789abcdef" for c in value))


def fingerprint_of(
    bottom: nn.Module,
    *,
    model: nn.Module,
    at: int,
    num_layers: int,
    blocks: str | list[str],
    codec: str,
    tokenizer: Any = None,
    preprocess: dict | None = None,
    autocast: str | None = None,
    allow_nonfinite: bool = False,
) -> Fingerprint:
    """Fingerprint of ``bottom`` (a half of ``model`` split at ``at`` of ``num_layers``) stored as ``codec``."""
    parts = {
        "format": str(FORMAT_VERSION),
        "model": _class_name(model),
        "config": _config(model, bottom),
        "split": f"{at} of {num_layers} blocks of {blocks or 'the model'}",
        "weights": weights_digest(bottom),
        "codec": codec,
    }
    if autocast is not None:  # states computed in lower precision are other states
        parts["autocast"] = autocast
    if allow_nonfinite:  # a store filled without it holds finite states only: its readers may count on that
        parts["nonfinite"] = "allowed"
    if tokenizer is not None or preprocess:
        parts["preprocess"] = digest({"tokenizer": _tokenizer_digest(tokenizer), "call": _jsonable(preprocess or {})})
    return Fingerprint(parts)


def weights_digest(module: nn.Module) -> str:
    """Digest of every parameter and buffer: name, dtype, shape and bytes (a 1-ulp change is a new digest)."""
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    tensors = dict(module.named_parameters(remove_duplicate=False))
    tensors.update(module.named_buffers(remove_duplicate=False))
    for name in sorted(tensors):
        h.update(name.encode() + b"\0")
        h.update(bytes.fromhex(digest(tensors[name].detach())))
    return h.hexdigest()


def _inert(field: str) -> bool:
    """Config fields that cannot change an eval-mode bottom: dropout rates (off in eval), and the dtype field
    (the weights' own dtype is in the weights digest; the field reads None or "float32" for the same weights)."""
    return "dropout" in field or "drop_path" in field or field in ("layerdrop", "dtype", "torch_dtype")


def _class_name(model: nn.Module) -> str:
    base = getattr(model, "base_model", model)
    return f"{type(base).__module__}.{type(base).__qualname__}"


def _config(model: nn.Module, bottom: nn.Module) -> str:
    """The model config's fields that can change the bottom's output, as canonical JSON (a plain module: a digest)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return digest(repr(bottom))  # a plain module: its structure (layer types and sizes) describes it
    described = {k: v for k, v in config.to_dict().items() if k not in _HEAD_ONLY_CONFIG and not _inert(k)}
    return json.dumps(_jsonable(described), sort_keys=True, separators=(",", ":"))


def _tokenizer_digest(tokenizer: Any) -> str | None:
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The whole pipeline (vocabulary, normalizer, pre-tokenizer, post-processor), less the truncation and
        # padding that each call sets on the backend: they are call arguments (``preprocess``), not state.
        content = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    elif hasattr(tokenizer, "get_vocab"):
        content = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    else:
        content = repr(tokenizer)
    special = getattr(tokenizer, "special_tokens_map", {})
    return digest({"class": type(tokenizer).__qualname__, "content": content, "special": _jsonable(special)})


def _jsonable(obj: Any) -> Any:
    """A canonical JSON-like copy: objects without a JSON form become their repr."""
    return json.loads(json.dumps(obj, sort_keys=True, default=repr))
