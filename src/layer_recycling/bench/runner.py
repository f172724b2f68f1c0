"""Run one benchmark setting on one task: train, time, score, and describe it as one JSON-ready result.

Settings: ``full`` fine-tuning, ``frozen`` (bottom frozen, no cache), ``recycled`` (from a store, any codec),
``recycled+lora`` (LoRA adapters on the top blocks through PEFT), ``head`` (the pooled output stored, a head trained
on it: ``recycle(at="pooled")``). All share one training loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..integrations.peft import add_lora
from ..arch import lookup
from ..loader import dataloader, inputs_dataset
from ..model import Recycled, recycle
from ..pipeline import input_names_of
from ..discover import split
from ..pooled import ClassifierHead, SkipConnectionHead
from ..surgery import replace
from ..stack import LOSSLESS
from ..stores import DiskStore, MemoryStore
from .reporting import check_addition
from .result import Result
from .settings import Setting, TrainConfig
from .tasks import Task


def run(task: Task, setting: Setting, make_model: Callable[[], nn.Module], cfg: TrainConfig,
        lower: dict[int, Recycled] | None = None) -> Result:
    """Train ``setting`` on ``task`` and return its measurements.

    ``lower``: recycled runs of this sweep by block count; the highest below this level feeds its fill (a
    stacked fill: only the blocks between run), and a lossless recycled run adds itself for the next.
    """
    _reset_peak_memory()
    torch.manual_seed(cfg.seed)
    model = make_model()
    cpu = time.process_time()
    store_path, below = None, None
    if setting.name == "full":
        trainable, forward, fill_s, cache = list(model.parameters()), model, 0.0, None
    else:
        store, store_path = _store(setting, cfg)
        pooled = setting.name == "head"
        rec = recycle(**_head_setting(task, model), store=store) if pooled else recycle(model, setting.level, store)
        if setting.name == "recycled+lora":
            add_lora(rec, r=cfg.lora_rank)
        trainable, forward, cache = [p for p in rec.parameters() if p.requires_grad], rec, store
        below = None if pooled else max((r for at, r in (lower or {}).items() if at < rec.at), key=lambda r: r.at,
                                        default=None)
        start = time.perf_counter()
        rec.fill(task.fill_examples(), batch_size=cfg.batch_size, progress=False,
                 start_from=below if rec.pipeline.keeps else None)
        fill_s = time.perf_counter() - start
        if lower is not None and setting.name == "recycled" and rec.store.codec in LOSSLESS:
            lower[rec.at] = rec
    batches = _train_batches(task, forward, cfg)
    lr = {"recycled+lora": cfg.lora_lr, "head": cfg.head_lr}.get(setting.name, cfg.lr)
    try:
        epochs_s = train_epochs(forward, batches, trainable, lr, cfg.epochs, setting.label, task.training_loss)
    except NothingToTrain:
        if getattr(forward, "at", None) != getattr(forward, "num_layers", -1):
            raise
        epochs_s = []  # every block recycled and no head: the score is the pretrained model's
    cpu_s = time.process_time() - cpu  # fill and epochs: the process's CPU time, whatever else the machine runs
    forward.eval()
    start = time.perf_counter()
    scores = task.evaluate(forward)
    first_s = time.perf_counter() - start  # a recycled model's test inputs are misses here (and get stored)
    start = time.perf_counter()
    if cache is not None:
        task.evaluate(forward)  # now all hits
    hits_s = time.perf_counter() - start if cache is not None else first_s
    val_scores = task.evaluate_val(forward)  # after the timed passes: it does not count in inference speed
    constant = task.constant()  # the floor a model that learned anything passes
    constant_val = task.evaluate_val(constant) if constant is not None else None
    result = Result(
        setting=setting.name, label=setting.label, level=setting.level if setting.name != "full" else 0.0,
        at=_blocks(model) if setting.name == "head" else getattr(forward, "at", 0),
        codec=setting.codec if setting.name.startswith("recycled") else None,
        metric=task.metric, score=scores[task.metric], scores=scores,
        fill_s=fill_s, fill_from_at=below.at if below is not None and cache is not None else None,
        train_s_per_epoch=sum(epochs_s) / len(epochs_s) if epochs_s else 0.0, epochs_s=epochs_s,
        trained=bool(epochs_s),
        end_to_end_s=fill_s + sum(epochs_s), infer_hits_per_s=len(task.test) / hits_s,
        infer_misses_per_s=len(task.test) / first_s, cache_bytes=cache.volume() if cache is not None else 0,
        end_to_end_cpu_s=cpu_s, cache_entries=len(cache) if cache is not None else None,
        val_score=val_scores[task.metric] if val_scores else None, val_scores=val_scores,
        trainable_params=sum(p.numel() for p in trainable), peak_mem_mb=_peak_memory_mb(),
        constant_score=task.evaluate(constant)[task.metric] if constant is not None else None,
        constant_val_score=constant_val[task.metric] if constant_val else None,
    )
    if store_path is not None:
        shutil.rmtree(store_path, ignore_errors=True)
    return result


def _head_setting(task: Task, model: nn.Module) -> dict[str, Any]:
    """``recycle``'s arguments for the head setting: the pooled output stored, a ``SkipConnectionHead`` trained on it
    (retrieval), or one with a classifier (classification). Text models pool as their ``1_Pooling`` says; an image
    model's pooled features are its output without the classifier (``head.fc``)."""
    if task.kind not in ("retrieval", "seq-cls", "image-cls"):
        raise ValueError(f"the head setting trains a head on one pooled vector per input: for retrieval, seq-cls and "
                         f"image-cls; task {task.kind!r} needs per-token outputs. Leave 'head' out of --levels")
    example = task.train[0].get("anchor", task.train[0])
    text = "pixel_values" not in example
    if text:
        width, pooling = model.config.hidden_size, {"pooling": task.extra.get("pooling", task.pooling)}
    else:
        if task.kind == "image-cls":
            model = replace(model, {"head.fc": nn.Identity()})  # the bench's ImageClassifier: its pooled features
        with torch.no_grad():
            width, pooling = model.eval()(example["pixel_values"][None]).logits.shape[-1], {}
    head = SkipConnectionHead(width) if task.kind == "retrieval" else ClassifierHead(width, task.num_labels)
    return {"model": model, "at": "pooled", "head": head, **pooling}


def _blocks(model: nn.Module) -> int:
    """All of the model's blocks: what the head setting recycles, besides the pooling."""
    return split(model, 1.0).num_layers


def _store(setting: Setting, cfg: TrainConfig):
    if setting.name == "frozen":
        return None, None
    if setting.codec == "float32" and cfg.store_dir is None:
        return MemoryStore(), None
    path = Path(tempfile.mkdtemp(prefix="lr-bench-", dir=cfg.store_dir))
    return DiskStore(path / "store", codec=setting.codec), path


def _train_batches(task: Task, forward: nn.Module, cfg: TrainConfig):
    """A DataLoader of training batches: stored states for a recycled model, model inputs otherwise."""
    common = dict(batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed, group_by_length=True, inputs=task.inputs)
    if isinstance(forward, Recycled):
        return forward.loader(task.train, progress=False, **common)
    return input_loader(forward, task.train, **common)


def input_loader(model: nn.Module, examples: Iterable[Any], batch_size: int = 32, shuffle: bool = False,
                 group_by_length: bool = False, seed: int | None = None, inputs: Sequence[str] | None = None,
                 **dataloader_kwargs) -> torch.utils.data.DataLoader:
    """Padded batches of ``model``'s inputs and labels: the full fine-tuning baseline trains the whole,
    un-recycled model on them, batched as ``Recycled.loader`` batches (``inputs``: examples of several inputs).
    A list or ``datasets.Dataset`` is read again for each batch (the loader holds a length an example)."""
    arch = lookup(model)
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
    dataset = inputs_dataset(examples, input_names_of(model, arch.generic), pad_id, arch.masked, inputs, "input_loader",
                             arch.frames, model)
    return dataloader(dataset, dataset.lengths, batch_size=batch_size, shuffle=shuffle, group_by_length=group_by_length,
                      seed=seed, **dataloader_kwargs)


class NothingToTrain(ValueError):
    """The loss does not depend on any trainable parameter (every block recycled, and no head)."""


def train_epochs(forward: nn.Module, batches, params: list, lr: float, epochs: int, label: str,
                 loss: Callable[[nn.Module, dict], torch.Tensor] | None = None,
                 after_epoch: Callable[[int], bool] | None = None) -> list[float]:
    """Train ``params`` of ``forward`` on ``batches`` with AdamW; returns the seconds of each epoch.

    ``loss(forward, batch)``: the training loss of a batch; default ``forward(**batch).loss``.
    ``after_epoch(epoch)`` (1-based), untimed, after each epoch: False stops the training there.

    Raises:
        NothingToTrain: the first batch's loss has no gradient (nothing above the cache to train).
    """
    loss = loss or (lambda model, batch: model(**batch).loss)
    opt = torch.optim.AdamW(params, lr=lr) if params else None
    seconds = []
    for epoch in range(epochs):
        forward.train()
        start = time.perf_counter()
        for batch in tqdm(batches, desc=f"{label} epoch {epoch + 1}", leave=False, unit="batch"):
            value = loss(forward, batch)
            if not value.requires_grad or opt is None:
                raise NothingToTrain(f"{label}: the loss depends on no trainable parameter (got {len(params)} "
                                     "trainable tensors, none in its graph); recycle fewer blocks, or add a head")
            value.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
        if after_epoch is not None and not after_epoch(epoch + 1):
            break
    return seconds


def _reset_peak_memory() -> None:
    try:  # Linux: "5" resets the peak resident set size of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_memory_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment() -> dict:
    """Library versions, git commit and machine, for every result."""
    import platform
    import subprocess

    import layer_recycling

    versions = {"layer_recycling": layer_recycling.__version__, "torch": torch.__version__}
    for name in ("transformers", "peft"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(__file__)).stdout.strip() or None
    except OSError:
        commit = None
    return {**versions, "git_commit": commit, "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads()}


def data_fingerprint(task: Task) -> str:
    """A hash of the task's examples, labels and search lists: equal for the same data, split and preprocessing.

    Results keep the dataset's file name only; this tells two files of one name (or two splits of one file) apart.
    """
    def default(x):
        if isinstance(x, torch.Tensor):  # a tensor by its dtype, shape and bytes
            t = x.detach().cpu().contiguous().reshape(-1)
            return [str(x.dtype), list(x.shape), hashlib.sha256(t.view(torch.uint8).numpy()).hexdigest()]
        if hasattr(x, "tolist"):  # numpy arrays and scalars
            return x.tolist()
        if isinstance(x, (set, frozenset)):
            return sorted(x, key=repr)
        return type(x).__qualname__  # not repr: it may hold an address that differs run to run

    parts = [task.kind, task.num_labels, task.label_names, task.train, task.val, task.test, task.extra, task.val_extra]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=default).encode()).hexdigest()[:16]


def conditions(task: Task, model: str, cfg: TrainConfig) -> dict:
    """What every result of a sweep shares, as JSON: the model's source and the config (training, data) but the seed.

    A report compares results only when these match (``reporting.conditions``), and a sweep checks its folder first.
    """
    # head_lr at its default is left out, so sweeps without the head setting match those made before it existed
    kept = {k: v for k, v in cfg.__dict__.items() if k != "seed" and not (k == "head_lr" and v == TrainConfig.head_lr)}
    config = {**kept, "train_examples": len(task.train),
              "val_examples": len(task.val), "test_examples": len(task.test), "sizes": task.sizes(),
              "preprocess": task.preprocess, "data_fingerprint": data_fingerprint(task)}
    return json.loads(json.dumps({"model_source": model_source(model), "config": config}, default=str))


def model_source(model: str) -> str:
    """A built-in model's name, else the model folder's absolute path: two folders of one name stay apart."""
    from .catalog import IMAGE_MODELS, TEXT_MODELS

    local = Path(model).expanduser()
    return str(model) if model in TEXT_MODELS or model in IMAGE_MODELS or not local.exists() else str(local.resolve())


def _check_seeds(seeds: list[int]) -> None:
    if not seeds:
        raise ValueError("seeds=[]: expected at least one seed, e.g. seeds=(0,) (--seeds 1) or (0, 1, 2) (--seeds 3)")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ValueError(f"seeds={seeds}: seed(s) {twice} listed more than once; each seed trains every setting once "
                         f"and writes its own files, so a repeat would only overwrite them: list each seed once, "
                         f"e.g. seeds={sorted(set(seeds))}")


def sweep(task: Task, model: str, make_model: Callable[[], nn.Module], settings: list[Setting],
          cfg: TrainConfig, out: str | Path, seeds: Sequence[int] = (0,), echo: Callable[[str], None] = print
          ) -> list[Result]:
    """Run every setting for every seed; write ``out/<dataset>-<model>-<label>-seed<k>.json`` for each run.

    Raises:
        ValueError: ``seeds`` is empty or repeats a seed, or ``out`` holds results of this task, dataset and model
            made under other conditions (``conditions``) - checked before anything trains.
    """
    seeds, out = list(seeds), Path(out)
    _check_seeds(seeds)
    shared = conditions(task, model, cfg)
    check_addition(out, (task.kind, task.dataset, Path(model).name), shared)
    out.mkdir(parents=True, exist_ok=True)
    meta = environment()
    results = []
    for seed in seeds:
        lower: dict[int, Recycled] = {}  # each level's fill starts from the store of the level below
        for setting in sorted(settings, key=lambda s: (s.name != "recycled", s.level)):
            result = run(task, setting, make_model, TrainConfig(**{**cfg.__dict__, "seed": seed}), lower)
            result = dataclasses.replace(result, task=task.kind, dataset=task.dataset, model=Path(model).name,
                                         model_source=shared["model_source"], seed=seed, meta=meta,
                                         config={**shared["config"], "seed": seed})
            name = f"{task.dataset}-{Path(model).name}-{setting.label}-seed{seed}".replace(" ", "_").replace("%", "pct")
            (out / f"{name}.json").write_text(json.dumps(result.to_json(), indent=2))
            results.append(result)
            echo(f"{setting.label:>24}  {task.metric} {result.score:6.2f}  end-to-end {result.end_to_end_s:7.1f} s"
                 f"  (fill {result.fill_s:.1f} s, {result.train_s_per_epoch:.1f} s/epoch)")
    return results
