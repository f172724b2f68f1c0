"""Task metrics computed once, in one place: classification, entity-level NER F1, SQuAD v1.1 QA and retrieval.

Every metric returns points in [0, 100] as a Python float.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def _check_pair(preds: Sequence[Any], labels: Sequence[Any], names: tuple[str, str]) -> None:
    if len(preds) != len(labels):
        raise ValueError(
            f"{names[0]} has {len(preds)} items but {names[1]} has {len(labels)}; "
            f"expected equal lengths, one prediction per reference: pass aligned lists"
        )
    if len(preds) == 0:
        raise ValueError(f"{names[0]} and {names[1]} are empty; a metric needs at least one item")


def accuracy(preds: Sequence[Any], labels: Sequence[Any]) -> float:
    """Percentage of positions where ``preds[i] == labels[i]``.

    Raises:
        ValueError: if the lengths differ or both are empty.
    """
    preds, labels = list(preds), list(labels)
    _check_pair(preds, labels, ("preds", "labels"))
    return 100.0 * sum(bool(p == t) for p, t in zip(preds, labels)) / len(labels)


def macro_f1(preds: Sequence[Any], labels: Sequence[Any]) -> float:
    """Unweighted mean of per-class F1 over every class that occurs in ``labels`` or ``preds``.

    A class absent from both has no F1 and is skipped; a class never predicted correctly scores 0.

    Raises:
        ValueError: if the lengths differ or both are empty.
    """
    preds, labels = list(preds), list(labels)
    _check_pair(preds, labels, ("preds", "labels"))
    hits = Counter(t for p, t in zip(preds, labels) if p == t)
    n_true, n_pred = Counter(labels), Counter(preds)
    classes = set(n_true) | set(n_pred)
    # F1 = 2tp / (2tp + fp + fn) = 2tp / (n_true + n_pred): never 0/0 for a class that occurs at all.
    f1s = [2 * hits[c] / (n_true[c] + n_pred[c]) for c in classes]
    return 100.0 * sum(f1s) / len(f1s)


def _split_tag(tag: str, sentence: int, position: int) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[:2] in ("B-", "I-"):
        return tag[0], tag[2:]
    raise ValueError(
        f"tag {tag!r} at sentence {sentence}, position {position} is not BIO (IOB2); "
        f"expected 'O', 'B-<type>' or 'I-<type>': convert IOBES or bare tags first"
    )


def entity_spans(tags: Sequence[str], sentence: int = 0) -> set[tuple[str, int, int]]:
    """Entities of one BIO sentence as ``(type, start, end)`` with ``end`` exclusive (conlleval chunks).

    An entity starts at ``B-T``, or at ``I-T`` after ``O`` or after another type, and runs over ``I-T``.

    Raises:
        ValueError: if a tag is not ``O``, ``B-<type>`` or ``I-<type>``.
    """
    spans: set[tuple[str, int, int]] = set()
    start, kind = None, ""
    for i, tag in enumerate([*tags, "O"]):  # the sentinel O closes an entity at the end
        prefix, tag_kind = _split_tag(tag, sentence, i)
        continues = prefix == "I" and tag_kind == kind and start is not None
        if start is not None and not continues:
            spans.add((kind, start, i))
            start = None
        if prefix != "O" and not continues:
            start, kind = i, tag_kind
    return spans


def entity_f1(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> float:
    """Entity-level micro F1 over BIO sentences, as seqeval and conlleval compute it.

    An entity counts only if its type, start and end all match. With no entities in either the gold
    or the predictions the score is 0.0, as in seqeval.

    Raises:
        ValueError: if the sentence counts or one sentence's lengths differ, or a tag is not BIO.
        TypeError: if a sentence is a string rather than a list of tags.
    """
    _check_pair(true_tags, pred_tags, ("true_tags", "pred_tags"))
    tp = n_true = n_pred = 0
    for s, (true, pred) in enumerate(zip(true_tags, pred_tags)):
        if isinstance(true, str) or isinstance(pred, str):
            raise TypeError(
                f"sentence {s} is a string ({true!r} / {pred!r}); expected one list of tags per sentence: "
                f"wrap a single sentence as [tags]"
            )
        if len(true) != len(pred):
            raise ValueError(
                f"sentence {s} has {len(true)} true tags but {len(pred)} predicted tags; "
                f"expected one predicted tag per token: align predictions to the gold tokens"
            )
        gold, guess = entity_spans(true, s), entity_spans(pred, s)
        tp, n_true, n_pred = tp + len(gold & guess), n_true + len(gold), n_pred + len(guess)
    # Micro F1 = 2PR/(P+R) = 2tp / (n_true + n_pred).
    return 100.0 * 2 * tp / (n_true + n_pred) if n_true + n_pred else 0.0


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:  # as in the v1.1 script: no overlap, or either side empty, scores 0
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def _exact(prediction: str, answer: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(answer))


def _squad_mean(score: Callable[[str, str], float], predictions: Sequence[str],
                answers: Sequence[Sequence[str]]) -> float:
    _check_pair(predictions, answers, ("predictions", "answers"))
    total = 0.0
    for i, (pred, golds) in enumerate(zip(predictions, answers)):
        if isinstance(golds, str) or len(golds) == 0:
            raise ValueError(
                f"answers[{i}] is {golds!r}; expected a non-empty list of gold answer strings "
                f"(SQuAD v1.1 has at least one per question): wrap a single answer as [answer]"
            )
        total += max(score(pred, gold) for gold in golds)
    return 100.0 * total / len(predictions)


def squad_exact_match(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Percentage of questions whose normalised prediction equals one of its normalised gold answers.

    Raises:
        ValueError: if the lengths differ, both are empty, or a question has no gold answers.
    """
    return _squad_mean(_exact, predictions, answers)


def squad_f1(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean over questions of the best bag-of-tokens F1 against any gold answer (SQuAD v1.1).

    Raises:
        ValueError: if the lengths differ, both are empty, or a question has no gold answers.
    """
    return _squad_mean(_token_f1, predictions, answers)


def _entity_f1_preds_first(pred_tags: Sequence[Sequence[str]], true_tags: Sequence[Sequence[str]]) -> float:
    return entity_f1(true_tags, pred_tags)


# Every entry is called as fn(predictions, references), so callers need not know each metric's order.
METRICS: dict[str, Callable[[Any, Any], float]] = {
    "accuracy": accuracy,
    "macro_f1": macro_f1,
    "entity_f1": _entity_f1_preds_first,
    "exact_match": squad_exact_match,
    "squad_f1": squad_f1,
}


# --- retrieval ----------------------------------------------------------------------------------------------------

def ranking(similarity: Any, relevant: Sequence[Collection[int]], exclude: Sequence[int | None] | None = None,
            ks: Sequence[int] = (1, 5, 10), depth: int = 10) -> dict[str, float]:
    """Recall@k, MRR@depth and nDCG@depth of an exact search: every query against every corpus entry.

    Args:
        similarity: a ``(queries, corpus)`` tensor of scores, higher is closer (cosine for unit vectors).
        relevant: per query, the corpus positions that answer it (binary relevance); at least one each.
        exclude: per query, a corpus position never ranked (the query itself, when queries are drawn from the
            corpus), or None. A NaN score (a model whose training diverged) is never ranked either: such a query
            finds nothing.
        ks: the cut-offs of Recall@k: the share of queries with a relevant entry among their top k (the
            metric-learning Recall@k; with one relevant entry per query, the hit rate).
        depth: the cut-off of MRR and nDCG.

    Returns:
        ``{"recall@k": ..., "mrr@depth": ..., "ndcg@depth": ...}`` in points (0-100).

    Raises:
        ValueError: shapes disagree, a query has no relevant entry, or a position is out of range.
    """
    import torch

    scores = torch.as_tensor(similarity, dtype=torch.float32).clone()
    if scores.dim() != 2 or scores.shape[0] != len(relevant) or scores.shape[0] == 0:
        raise ValueError(f"similarity has shape {tuple(scores.shape)} and relevant has {len(relevant)} rows; "
                         "expected a (queries, corpus) matrix with one relevant set per query, at least one query")
    n_queries, n_corpus = scores.shape
    for q, found in enumerate(relevant):
        if not found or any(not 0 <= c < n_corpus for c in found):
            raise ValueError(f"query {q} has relevant positions {sorted(found)}; expected at least one, each in "
                             f"0..{n_corpus - 1}: drop queries that nothing in the corpus answers")
    scores = scores.nan_to_num(nan=float("-inf"))
    if exclude is not None:
        if len(exclude) != n_queries:
            raise ValueError(f"exclude has {len(exclude)} entries for {n_queries} queries; expected one (or None) each")
        for q, c in enumerate(exclude):
            if c is not None:
                scores[q, c] = float("-inf")
    top = max(*ks, depth)
    best = scores.topk(min(top, n_corpus), dim=1)
    recall = {k: 0.0 for k in ks}
    mrr = ndcg = 0.0
    for q, (ranked, kept) in enumerate(zip(best.indices.tolist(), (best.values > float("-inf")).tolist())):
        hits = [c in relevant[q] for c, keep in zip(ranked, kept) if keep]  # excluded and NaN positions: unranked
        for k in ks:
            recall[k] += any(hits[:k])
        first = next((r for r, hit in enumerate(hits[:depth]) if hit), None)
        mrr += 0.0 if first is None else 1.0 / (first + 1)
        dcg = sum(1.0 / math.log2(r + 2) for r, hit in enumerate(hits[:depth]) if hit)
        ideal = sum(1.0 / math.log2(r + 2) for r in range(min(len(relevant[q]), depth)))
        ndcg += dcg / ideal
    out = {f"recall@{k}": 100.0 * recall[k] / n_queries for k in ks}
    return {**out, f"mrr@{depth}": 100.0 * mrr / n_queries, f"ndcg@{depth}": 100.0 * ndcg / n_queries}
