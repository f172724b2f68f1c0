"""Shared test helpers: padded batches, output and store comparison, a trained tiny classifier."""

from __future__ import annotations

import contextlib
import gc
import sys
import types

import numpy as np

import torch

from conftest import LABELS, text_examples, text_model


def padded_batch(examples: list[dict], pad_id: int = 0, extra: int = 2) -> dict[str, torch.Tensor]:
    """Right-pad examples to the longest plus ``extra`` columns, as a tokenizer with padding would."""
    t = max(len(e["input_ids"]) for e in examples) + extra
    ids = torch.full((len(examples), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), t), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
        mask[i, : len(e["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask}


def tensors_of(output) -> dict[str, torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return {"output": output}
    return {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}


def max_diff(expected, actual, mask: torch.Tensor | None = None) -> float:
    """Largest abs difference over all tensor outputs; per-token outputs are compared where mask is 1."""
    want, got = tensors_of(expected), tensors_of(actual)
    assert want.keys() <= got.keys(), f"missing outputs: {want.keys() - got.keys()}"
    worst = 0.0
    for name, a in want.items():
        b = got[name]
        assert a.shape == b.shape, f"{name}: shape {tuple(b.shape)} != expected {tuple(a.shape)}"
        if mask is not None and a.dim() >= 2 and a.shape[:2] == mask.shape:
            keep = mask.bool()
            a, b = a[keep], b[keep]
        worst = max(worst, float((a - b).abs().max()) if a.numel() else 0.0)
    return worst


def assert_stores_agree(reference, other, tolerance: float = 1e-5) -> None:
    """Two stores hold the same keys, and states within ``tolerance`` (the library's promise across layouts).

    Bytes agree only where the arithmetic does: other processes may run other thread counts, and a CPU may
    split a reduction differently for each. So states are compared to 1e-5, and the message says how far apart
    they were; the exact-once counting stays the strict check of a multi-process fill.
    """
    keys = sorted(reference)
    assert sorted(other) == keys, f"keys differ: {len(set(other) ^ set(keys))} of {len(keys)} are in one store only"
    worst, where = 0.0, None
    for key, a, b in zip(keys, reference.get_many(keys), other.get_many(keys)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{key}: {b.dtype}{tuple(b.shape)} != {a.dtype}{tuple(a.shape)}"
        diff = float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
        if diff > worst:
            worst, where = diff, key
    assert worst <= tolerance, f"states differ by up to {worst:.3g} (key {where}); promised at most {tolerance}"


@contextlib.contextmanager
def threads(n: int):
    """Run the block with ``n`` intra-op threads (as the ranks and Ray workers run), then restore the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bert_classifier(seed: int = 0) -> torch.nn.Module:
    """The tiny BERT sequence classifier of conftest (the same weights for the same seed)."""
    return text_model("bert", "ForSequenceClassification", seed=seed)


def nan_bottom(bert, token: int = 7):
    """``bert`` whose embedding of ``token`` is NaN: the examples holding it give NaN states, the others do not."""
    with torch.no_grad():
        bert.bert.embeddings.word_embeddings.weight[token] = float("nan")
    return bert


def train_top(rec, steps: int = 3) -> None:
    """A few SGD steps on the top of ``rec`` from its loader, so its weights differ from the model's."""
    opt = torch.optim.SGD([p for p in rec.parameters() if p.requires_grad], lr=0.5)
    for _, batch in zip(range(steps), rec.loader(labelled_examples(), batch_size=4, progress=False)):
        rec(**batch).loss.backward()
        opt.step()
        opt.zero_grad()


def labelled_examples() -> list[dict]:
    """8 tiny text examples with labels for a 3-label classifier."""
    return [dict(e, label=i % LABELS) for i, e in enumerate(text_examples(8))]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Equal state dicts: the same keys (at least one) and equal tensors."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and len(sa) > 0
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])][:3]


def reachable_bytes(root, source) -> int:
    """Bytes of the Python objects reachable from ``root``, with the data of arrays and of tensors outside shared
    memory (the columns are in shared memory), the user's ``source`` and code, modules and models aside."""
    seen, todo, total = {id(source)}, [root], 0
    code = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType, torch.nn.Module)
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, code):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, torch.Tensor) and not obj.is_shared():
            total += obj.untyped_storage().nbytes()
        if isinstance(obj, np.ndarray) and obj.base is not None:  # numpy does not list it among the referents
            todo.append(obj.base)
        todo.extend(gc.get_referents(obj))
    return total
