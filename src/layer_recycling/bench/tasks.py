"""Benchmark tasks: examples in our one-example-dict form, the head to fine-tune, and how to score a model.

A task's ``evaluate(forward, batch_size)`` runs ``forward`` (any callable taking padded model inputs) over the
test examples and returns its metrics in points (0-100); the first metric is the task's score.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch import nn

from .. import batches, data
from . import metrics

Forward = Callable[..., Any]


@dataclasses.dataclass
class Task:
    """One benchmark task on one dataset."""

    kind: str  # "seq-cls" | "token-cls" | "qa" | "image-cls" | "retrieval"
    dataset: str
    train: list[dict]  # one-example dicts: unpadded model inputs plus labels
    test: list[dict]  # the same, with the fields ``evaluate`` needs
    num_labels: int
    metric: str  # the name of the score in ``evaluate``'s result
    evaluate_fn: Callable[[Task, Forward, int], dict[str, float]]
    label_names: list[str] | None = None
    pad_id: int = 0
    extra: dict = dataclasses.field(default_factory=dict)  # e.g. QA's raw examples for answer extraction
    val: list[dict] = dataclasses.field(default_factory=list)  # held out of train: levels are chosen on it
    val_extra: dict = dataclasses.field(default_factory=dict)  # ``extra`` for the validation examples
    preprocess: dict | None = None  # the tokenizer's call arguments: recycle(preprocess=) of a store filled from it
    inputs: tuple[str, ...] | None = None  # training examples of several inputs: their fields (loader(inputs=))
    loss: Callable[[Forward, dict], torch.Tensor] | None = None  # of a training batch; None: forward(**batch).loss
    pooling: str | None = None  # how a text model pools (its 1_Pooling): the head setting's stored vector

    def fill_examples(self) -> list[dict]:
        """Every model input of the training examples, one each (those of several inputs flattened)."""
        if self.inputs is None:
            return self.train
        flat = []
        for example in self.train:
            for field in self.inputs:
                value = example[field]
                flat += value if isinstance(value, list) else [value]
        return flat

    def sizes(self) -> str:
        """How many examples each split holds, in words."""
        if self.kind != "retrieval":
            return f"{len(self.train)} train / {len(self.val)} validation / {len(self.test)} test examples"
        val = f"{len(self.val_extra['queries'])} validation / " if self.val else ""
        return (f"{len(self.train)} training pairs, {val}{len(self.extra['queries'])} test queries searching "
                f"{len(self.extra['corpus'])} entries")

    def training_loss(self, forward: Forward, batch: dict) -> torch.Tensor:
        return forward(**batch).loss if self.loss is None else self.loss(forward, batch)

    def evaluate_val(self, forward: Forward, batch_size: int = 64) -> dict[str, float] | None:
        """``evaluate`` on the validation examples (None when there are none)."""
        if not self.val:
            return None
        return dataclasses.replace(self, test=self.val, extra={**self.extra, **self.val_extra}).evaluate(
            forward, batch_size)

    def evaluate(self, forward: Forward, batch_size: int = 64) -> dict[str, float]:
        with torch.no_grad():
            return self.evaluate_fn(self, forward, batch_size)

    def constant(self) -> Constant | None:
        """A model that predicts the training examples' most frequent label everywhere (for token tasks, the most
        frequent label of a scored token): the score a model that learned nothing reaches. None for tasks without
        one label an example or token (retrieval, qa)."""
        if self.kind not in ("seq-cls", "image-cls", "token-cls"):
            return None
        per_token = self.kind == "token-cls"
        counts = Counter(y for e in self.train for y in (
            (int(v) for v in e["labels"] if int(v) != data.IGNORE_INDEX) if per_token else (int(e["labels"]),)))
        if not counts:
            return None
        top = max(counts.values())
        return Constant(min(y for y, n in counts.items() if n == top), self.num_labels, per_token)

    def batches(self, examples: list[dict], batch_size: int, inputs: tuple[str, ...]):
        """Padded batches of model inputs (no labels) over ``examples``, in order."""
        ragged = "input_ids" in examples[0]
        for i in range(0, len(examples), batch_size):
            rows = [{n: data.as_tensor(e[n], n) for n in inputs if n in e} for e in examples[i : i + batch_size]]
            yield batches.collate_inputs(rows, self.pad_id, ragged=ragged)


class Constant(nn.Module):
    """A model that predicts one label everywhere (per example, or per token): its logits favour ``label``."""

    def __init__(self, label: int, num_labels: int, per_token: bool):
        super().__init__()
        self.label, self.num_labels, self.per_token = label, num_labels, per_token

    def forward(self, **batch: torch.Tensor) -> SimpleNamespace:
        first = next(v for v in batch.values() if isinstance(v, torch.Tensor))
        shape = tuple(first.shape[:2]) if self.per_token else tuple(first.shape[:1])
        logits = torch.zeros(*shape, self.num_labels)
        logits[..., self.label] = 1.0
        return SimpleNamespace(logits=logits)


TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _evaluate_classes(task: Task, forward: Forward, batch_size: int) -> dict[str, float]:
    inputs = TEXT_INPUTS if "input_ids" in task.test[0] else ("pixel_values",)
    preds = []
    for batch in task.batches(task.test, batch_size, inputs):
        out = forward(**batch)
        preds += (out if isinstance(out, torch.Tensor) else out.logits).argmax(-1).tolist()
    labels = [int(e["labels"]) for e in task.test]
    return {"accuracy": metrics.accuracy(preds, labels), "macro_f1": metrics.macro_f1(preds, labels)}


def _evaluate_tokens(task: Task, forward: Forward, batch_size: int) -> dict[str, float]:
    true_tags, pred_tags = [], []
    for start, batch in zip(range(0, len(task.test), batch_size), task.batches(task.test, batch_size, TEXT_INPUTS)):
        predicted = forward(**batch).logits.argmax(-1)  # (b, t)
        for row, example in zip(predicted.tolist(), task.test[start : start + batch_size]):
            kept = [(p, y) for p, y in zip(row, example["labels"]) if y != data.IGNORE_INDEX]  # first sub-words
            true_tags.append([task.label_names[y] for _, y in kept])
            pred_tags.append([task.label_names[p] for p, _ in kept])
    return {"entity_f1": metrics.entity_f1(true_tags, pred_tags)}


def _evaluate_qa(task: Task, forward: Forward, batch_size: int) -> dict[str, float]:
    from .qa import predict_answers

    starts, ends = [], []
    for batch in task.batches(task.test, batch_size, TEXT_INPUTS):
        out = forward(**batch)
        starts += list(out.start_logits)
        ends += list(out.end_logits)
    examples = task.extra["examples"]
    answers = predict_answers(examples, task.test, starts, ends)
    predicted = [answers[e["id"]] for e in examples]
    gold = [e["answers"]["text"] for e in examples]
    return {"squad_f1": metrics.squad_f1(predicted, gold), "exact_match": metrics.squad_exact_match(predicted, gold)}


EVALUATORS = {"seq-cls": _evaluate_classes, "image-cls": _evaluate_classes, "token-cls": _evaluate_tokens,
              "qa": _evaluate_qa}
METRIC = {"seq-cls": "accuracy", "image-cls": "accuracy", "token-cls": "entity_f1", "qa": "squad_f1",
          "retrieval": "mrr@10"}
KINDS = (*EVALUATORS, "retrieval")  # the task kinds the harness runs (retrieval's tasks are built in retrieval.py)


def sequence_task(dataset: str, train: list[tuple[str, int]], test: list[tuple[str, int]], tokenizer,
                  max_length: int, label_names: list[str] | None = None, val: list[tuple[str, int]] = ()) -> Task:
    """Text classification: (text, label) pairs tokenized to ``max_length``; ``val`` the validation pairs.

    A text may be a (text, second text) tuple: the pair is tokenized together, as sentence-pair models expect.
    """
    if not train or not test:
        raise ValueError(f"{dataset}: {len(train)} training and {len(test)} test examples; expected some of "
                         f"each: pass more rows (or a --test-file)")
    call = {"truncation": True, "max_length": max_length}

    def encode(pairs):
        return [{**tokenizer(*(t if isinstance(t, tuple) else (t,)), **call), "labels": int(y)} for t, y in pairs]

    n = len(label_names) if label_names else 1 + max(y for _, y in train)
    return Task("seq-cls", dataset, encode(train), encode(test), n, METRIC["seq-cls"], EVALUATORS["seq-cls"],
                label_names, pad_id=tokenizer.pad_token_id or 0, val=encode(val), preprocess=call)


def token_task(dataset: str, train: list[tuple[list[str], list[str]]], test: list[tuple[list[str], list[str]]],
               tokenizer, max_length: int, val: list[tuple[list[str], list[str]]] = ()) -> Task:
    """Token classification (NER): words and BIO tags; each word's label sits on its first sub-word."""
    names = sorted({t for _, tags in [*train, *test, *val] for t in tags}, key=lambda t: (t != "O", t[2:], t))
    index = {t: i for i, t in enumerate(names)}
    call = {"is_split_into_words": True, "truncation": True, "max_length": max_length}

    def encode(sentences):
        out = []
        for words, tags in sentences:
            enc = tokenizer(words, **call)
            ids, previous, labels = enc.word_ids(), None, []
            for w in ids:
                labels.append(index[tags[w]] if w is not None and w != previous else data.IGNORE_INDEX)
                previous = w
            out.append({**enc, "labels": labels})
        return out

    return Task("token-cls", dataset, encode(train), encode(test), len(names), METRIC["token-cls"],
                EVALUATORS["token-cls"], names, pad_id=tokenizer.pad_token_id or 0, val=encode(val), preprocess=call)


def qa_task(dataset: str, train: list[dict], test: list[dict], tokenizer, max_length: int, stride: int,
            val: list[dict] = ()) -> Task:
    """Extractive QA on SQuAD-format examples, cut into overlapping windows. ``val``: whole questions, so that
    the windows of one question never straddle training and validation."""
    from .qa import eval_features, train_features

    return Task("qa", dataset, train_features(train, tokenizer, max_length, stride),
                eval_features(test, tokenizer, max_length, stride), 2, METRIC["qa"], EVALUATORS["qa"],
                pad_id=tokenizer.pad_token_id or 0, extra={"examples": test},
                val=eval_features(list(val), tokenizer, max_length, stride) if val else [],
                val_extra={"examples": list(val)},
                preprocess={"truncation": "only_second", "max_length": max_length, "stride": stride})


def image_task(dataset: str, train: tuple, test: tuple, transform: Callable[[Any], torch.Tensor],
               label_names: list[str] | None = None) -> Task:
    """Image classification: (images, labels) arrays; ``transform`` turns one image into (c, h, w) floats."""
    def encode(split):
        images, labels = split
        return [{"pixel_values": transform(img), "labels": int(y)} for img, y in zip(images, labels)]

    n = len(label_names) if label_names else 1 + int(max(train[1]))
    return Task("image-cls", dataset, encode(train), encode(test), n, METRIC["image-cls"],
                EVALUATORS["image-cls"], label_names)
