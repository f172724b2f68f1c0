"""Extractive question answering (SQuAD v1.1): unpadded one-example feature dicts for ``rec.fill`` / ``rec.loader``.

Long contexts become overlapping windows; ``predict_answers`` maps span logits back to context text by offsets.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

NO_ANSWER = 0  # label of a window that lacks the whole answer: the first (CLS) token, as transformers' QA heads expect
_FIELDS = ("id", "question", "context", "answers")


def train_features(examples: Iterable[Mapping], tokenizer: Any, max_length: int = 384,
                   stride: int = 128) -> list[dict]:
    """Training windows with span labels, one unpadded dict per window.

    Args:
        examples: SQuAD dicts ``{"id", "question", "context", "answers": {"text": [..], "answer_start": [..]}}``.
        tokenizer: a transformers fast tokenizer (character offsets are needed to place answers).
        max_length: tokens per window, question and special tokens included.
        stride: context tokens shared by consecutive windows of one example.

    Returns:
        One dict per window: the tokenizer's model inputs (``input_ids``, ``attention_mask``, ``token_type_ids``
        where the tokenizer makes them), each a list of ``t <= max_length`` ints, plus ``start_positions`` and
        ``end_positions``: token indices of the first answer, or ``0`` (CLS) when it is not wholly in the window.
        An example with an empty answer list is labelled ``0`` everywhere (SQuAD v2's unanswerable questions).

    Raises:
        TypeError: the tokenizer is not fast.
        ValueError: an example lacks a field, or ``max_length`` leaves no more than ``stride`` context tokens.
    """
    features = []
    for example, inputs, offsets, seq_ids in _windows(examples, tokenizer, max_length, stride, need_answers=True):
        start, end = _label(offsets, seq_ids, example["answers"])
        features.append({**inputs, "start_positions": start, "end_positions": end})
    return features


def eval_features(examples: Iterable[Mapping], tokenizer: Any, max_length: int = 384,
                  stride: int = 128) -> list[dict]:
    """Evaluation windows: the same windows as ``train_features``, with metadata instead of labels.

    Returns:
        One dict per window: model inputs, ``example_id`` and ``offset_mapping`` (``t`` entries: a
        ``(char_start, char_end)`` tuple for context tokens, ``None`` for question and special tokens, so that
        only context can be predicted). The library passes neither metadata field to the model.

    Raises:
        TypeError: the tokenizer is not fast.
        ValueError: an example lacks ``id``, ``question`` or ``context``, or the window is too small.
    """
    features = []
    for example, inputs, offsets, seq_ids in _windows(examples, tokenizer, max_length, stride, need_answers=False):
        context_offsets = [tuple(o) if s == 1 else None for o, s in zip(offsets, seq_ids)]
        features.append({**inputs, "example_id": example["id"], "offset_mapping": context_offsets})
    return features


def predict_answers(examples: Iterable[Mapping], features: Sequence[Mapping], start_logits: Sequence,
                    end_logits: Sequence, n_best: int = 20, max_answer_length: int = 30) -> dict[str, str]:
    """Answer text per example: the best-scoring span over all of its windows.

    A span ``(s, e)`` is valid when ``s <= e``, ``e - s + 1 <= max_answer_length`` and both are context tokens;
    its score is ``start_logits[s] + end_logits[e]``. Per window the search pairs the ``n_best`` highest-scoring
    context starts with the ``n_best`` highest-scoring context ends (exact whenever ``n_best`` covers them).

    Args:
        examples: the examples given to ``eval_features`` (``id`` and ``context`` are read).
        features: ``eval_features(examples, ...)``, in the order the logits were computed.
        start_logits: one 1-D row per feature (lists, arrays or tensors, or a ``(features, t_pad)`` tensor);
            positions past a feature's length (padding) are ignored.
        end_logits: same layout as ``start_logits``.
        n_best: top starts and top ends searched per window.
        max_answer_length: longest answer, in tokens.

    Returns:
        ``{example id: answer text}`` sliced from the context; ``""`` for an example without a valid span.

    Raises:
        ValueError: counts disagree, a feature lacks eval metadata, or a logits row is shorter than its feature.
    """
    contexts = _contexts_by_id(examples)
    if not len(features) == len(start_logits) == len(end_logits):
        raise ValueError(f"got {len(features)} features, {len(start_logits)} start_logits rows and "
                         f"{len(end_logits)} end_logits rows; expected one row of each per feature, in order")
    if n_best < 1 or max_answer_length < 1:
        raise ValueError(f"n_best={n_best} and max_answer_length={max_answer_length}; both must be at least 1")
    best: dict[str, tuple[float, str]] = {}
    for i, feature in enumerate(features):
        example_id, offsets = _eval_meta(feature, i, contexts)
        start, end = _row(start_logits[i], len(offsets), i), _row(end_logits[i], len(offsets), i)
        span = _best_span(start, end, offsets, n_best, max_answer_length)
        if span is not None and (example_id not in best or span[0] > best[example_id][0]):
            best[example_id] = (span[0], contexts[example_id][offsets[span[1]][0]:offsets[span[2]][1]])
    return {example_id: best[example_id][1] if example_id in best else "" for example_id in contexts}


def _windows(examples: Iterable[Mapping], tokenizer: Any, max_length: int, stride: int,
             need_answers: bool) -> list[tuple[Mapping, dict, list, list]]:
    """``(example, model inputs, offsets, sequence ids)`` for every window of every example."""
    _check_tokenizer(tokenizer)
    examples = list(examples)
    for index, example in enumerate(examples):
        _check_example(example, index, need_answers)
    if not examples:
        return []
    # SQuAD has questions with long runs of leading blanks; they would only eat window room
    questions = [example["question"].lstrip() for example in examples]
    _check_room(examples, questions, tokenizer, max_length, stride)
    enc = tokenizer(questions, [example["context"] for example in examples], truncation="only_second",
                    max_length=max_length, stride=stride, return_overflowing_tokens=True,
                    return_offsets_mapping=True)
    names = [name for name in tokenizer.model_input_names if name in enc]
    return [(examples[k], {name: list(enc[name][i]) for name in names}, enc["offset_mapping"][i], enc.sequence_ids(i))
            for i, k in enumerate(enc["overflow_to_sample_mapping"])]


def _label(offsets: Sequence, seq_ids: Sequence, answers: Mapping) -> tuple[int, int]:
    """Token ``(start, end)`` of the first answer, or ``(NO_ANSWER, NO_ANSWER)`` when it is not wholly here."""
    if not answers["text"]:
        return NO_ANSWER, NO_ANSWER
    start_char = int(answers["answer_start"][0])
    end_char = start_char + len(answers["text"][0])
    context = [t for t, s in enumerate(seq_ids) if s == 1]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return NO_ANSWER, NO_ANSWER
    # first token ending after the answer starts / last token starting before it ends: robust to answer_start
    # landing on a blank or inside a token
    start = next((t for t in context if offsets[t][1] > start_char), NO_ANSWER)
    end = next((t for t in reversed(context) if offsets[t][0] < end_char), NO_ANSWER)
    return (start, end) if start <= end else (NO_ANSWER, NO_ANSWER)


def _best_span(start: list, end: list, offsets: Sequence, n_best: int,
               max_answer_length: int) -> tuple[float, int, int] | None:
    """``(score, start, end)`` of the best valid span of one window, or ``None`` when there is none."""
    context = [t for t, o in enumerate(offsets) if o is not None]
    starts = heapq.nlargest(n_best, context, key=start.__getitem__)
    ends = heapq.nlargest(n_best, context, key=end.__getitem__)
    spans = [(start[s] + end[e], s, e) for s in starts for e in ends if s <= e < s + max_answer_length]
    return max(spans, key=lambda span: span[0], default=None)


def _row(logits: Any, length: int, index: int) -> list[float]:
    """The first ``length`` logits of feature ``index`` as floats (the rest is padding)."""
    values = logits.tolist() if hasattr(logits, "tolist") else list(logits)
    if not isinstance(values, list) or (values and isinstance(values[0], list)):
        raise ValueError(f"logits row of feature {index} has shape {getattr(logits, 'shape', '?')}; expected a "
                         "1-D row per feature, e.g. outputs.start_logits[i] for a (features, t) tensor")
    if len(values) < length:
        raise ValueError(f"feature {index} has {length} tokens but its logits row only {len(values)}; expected at "
                         "least one logit per token (longer rows are fine: padding is ignored)")
    return values[:length]


def _eval_meta(feature: Mapping, index: int, contexts: Mapping[str, str]) -> tuple[str, Sequence]:
    """``(example_id, offset_mapping)`` of one evaluation feature, checked."""
    for field in ("example_id", "offset_mapping"):
        if field not in feature:
            raise ValueError(f"feature {index} has no {field!r} (it has {sorted(feature)}); predict_answers needs "
                             "the features made by eval_features, not train_features")
    if feature["example_id"] not in contexts:
        raise ValueError(f"feature {index} belongs to example {feature['example_id']!r}, which is not among the "
                         f"{len(contexts)} examples passed; pass the examples that eval_features was given")
    return feature["example_id"], feature["offset_mapping"]


def _contexts_by_id(examples: Iterable[Mapping]) -> dict[str, str]:
    """``{id: context}``, refusing duplicate ids (answers are keyed by id)."""
    contexts: dict[str, str] = {}
    for index, example in enumerate(examples):
        _check_example(example, index, need_answers=False)
        if example["id"] in contexts:
            raise ValueError(f"example id {example['id']!r} appears twice; ids must be unique to key the answers")
        contexts[example["id"]] = example["context"]
    return contexts


def _check_tokenizer(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"got a {type(tokenizer).__name__}, which is not a fast tokenizer; QA features need the "
                        "character offsets only fast tokenizers return. Load it with "
                        "AutoTokenizer.from_pretrained(name, use_fast=True)")


def _check_example(example: Any, index: int, need_answers: bool) -> None:
    fields = _FIELDS if need_answers else _FIELDS[:3]
    if not isinstance(example, Mapping):
        raise TypeError(f"example {index} is a {type(example).__name__}; expected a SQuAD dict with keys {fields}")
    name = example.get("id", f"at index {index}")
    for field in fields:
        if field not in example:
            raise ValueError(f"example {name!r} has no {field!r} field (it has {sorted(example)}); expected SQuAD "
                             f"dicts with {fields}: add or rename the field")
    answers = example.get("answers") if need_answers else {"text": [], "answer_start": []}
    if not (isinstance(answers, Mapping) and "text" in answers and "answer_start" in answers
            and len(answers["text"]) == len(answers["answer_start"])):
        raise ValueError(f"example {name!r} has answers={answers!r}; expected "
                         "{'text': [str, ...], 'answer_start': [int, ...]} with one start per text")


def _check_room(examples: list, questions: list[str], tokenizer: Any, max_length: int, stride: int) -> None:
    """Refuse windows with no more than ``stride`` context tokens (the Rust tokenizer panics on them)."""
    if stride < 0:
        raise ValueError(f"stride={stride}; expected the number of context tokens windows share, >= 0")
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    for example, ids in zip(examples, tokenizer(questions, add_special_tokens=False)["input_ids"]):
        room = max_length - len(ids) - specials
        if room <= stride:
            raise ValueError(f"example {example['id']!r}: max_length={max_length} minus its {len(ids)} question "
                             f"tokens and {specials} special tokens leaves {room} context tokens per window, but "
                             f"windows need more than stride={stride}; raise max_length or lower stride")
