"""``choose``: the most recycled level whose validation drop stays within a target, for a fraction of a sweep's cost.

1. Full fine-tuning runs once, scored on validation after every epoch: the reference. A reference that ends no
   better than a constant prediction (the training examples' most frequent label, everywhere; classification and
   token tasks) learned nothing, and every level would hold against it: choose refuses it (``ReferenceDidNotLearn``)
   before any fill, with what to change.
2. One pass of the bottom fills every candidate level's store (stacked: each level's fill starts from the store of
   the level below, so only the blocks between two levels run).
3. Levels are tried from the most recycled down. Each trains as a sweep trains it and is scored after every epoch;
   it holds when its drop against the reference after the last epoch is within the target (the rule a sweep's pick
   reads, on one seed). The first level that holds is the answer: every more recycled one failed.
4. A level is stopped early only on a failure it is not recovering from: after two epochs in a row its drop against
   the reference at the same epoch exceeds the target by more than twice its standard error, and the gap did not
   narrow between them. One bad epoch is not enough: a level that trains fewer blocks can still be at chance after
   its first epoch and end within a few points (imdb with MiniLM: 75% and 50% at 50% and 55% accuracy after epoch
   1 of 2 against the reference's 75%; trained both epochs, 50% ended at the reference's 82%).
5. The budget: a level is tried only when its predicted cost keeps the total within ``budget`` full fine-tunings.
   The prediction is a line through the training seconds per epoch of the reference and of the last level that
   trained blocks, against the blocks each trained (on the runs of docs/findings.md it was within +0.01 to +0.04
   full fine-tunings of the measured cost; the reference's share of blocks alone, over by up to +0.06, is the
   prediction before any level trained blocks). When a level is not tried, neither is any below it (each trains
   more), the answer is full fine-tuning, and the untried levels are listed: "full" then means "no level shown to
   hold within the budget", not "every level fails".

Why this order and not another, for a user: a level costs about its share of trained blocks, so the most recycled
levels are both the cheapest to test and the ones worth most; testing them first spends little when the answer is
high (75% or above in 12 of the 21 picks of docs/findings.md's sweeps) and ends at the first hold. A bisection from
50% pays for 50% and then 75% (or 25%) to reach the same answers, and a successive halving by epochs ranks levels on
their first epochs, which the imdb case above shows can mislead. A second seed of a close level alone does not make
its drop much surer: the drop is the reference minus the level, and the reference's seed varies about as much as the
level's, so a second seed of the level cuts the drop's spread by about 13% (the square root of 3/4); a second pair
costs a full fine-tuning more, more than the budget leaves.

Validation is scored in ``folds`` disjoint parts (retrieval: parts of the queries, each searching the whole corpus):
a drop's interval is the 95% t-interval of the paired per-part drops. The cost is counted as a sweep counts its runs'
(``end_to_end_s``: fills and training), over the reference's training: the unit the sweeps' costs are given in; the
scoring after each epoch, which a sweep does once per run, is reported beside it. Seconds are this process's
CPU time: what else the machine runs does not change them, and with one thread (as the findings' sweeps ran, one
per core) they are its wall time.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..model import Recycled, recycle
from ..stores import MemoryStore
from . import retrieval
from .reporting import interval
from .runner import NothingToTrain, _train_batches, train_epochs
from .settings import Setting, TrainConfig
from .tasks import Task

LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)


class ReferenceDidNotLearn(ValueError):
    """Full fine-tuning ended no better on validation than a constant prediction: no level can be judged against
    it."""


@dataclasses.dataclass
class Probe:
    """One trained setting: its validation score after each epoch (the mean of the folds) and the verdict."""

    label: str
    level: float | None  # None: full fine-tuning
    at: int
    scores: list[float] = dataclasses.field(default_factory=list)  # per epoch
    folds: list[list[float]] = dataclasses.field(default_factory=list)  # per epoch, per fold
    train_s: float = 0.0
    eval_s: float = 0.0
    verdict: str = ""  # "reference", "holds", "fails", "fails after epoch e of E", "not tried: ..."
    drops: list[float] = dataclasses.field(default_factory=list)  # per epoch, against the reference at that epoch
    behind: list[bool] = dataclasses.field(default_factory=list)  # per epoch: past the target by over 2 standard errors
    drop: float | None = None
    half_width: float | None = None  # of the drop's 95% interval
    se: float | None = None  # the drop's standard error (None: one fold)


@dataclasses.dataclass
class Choice:
    """The answer of ``choose``: the level (None: no level held, fine-tune fully), how sure, and what it cost."""

    level: float | None
    at: int | None
    max_drop: float
    metric: str
    probes: list[Probe]
    seconds: dict[str, float]  # reference, fill, training, scoring
    budget: float
    test: dict[str, float] | None = None  # with confirm: the chosen level's and the reference's test scores
    floor: float | None = None  # the validation score of a constant prediction (None: the task has none)
    num_layers: int | None = None  # the model's blocks (a level's ``at`` is its share of them)

    @property
    def cost(self) -> float:
        """Fills and training, in full fine-tunings (the reference's training time), as a sweep's runs count."""
        return (sum(self.seconds.values()) - self.seconds["scoring"]) / self.seconds["reference"]

    @property
    def cost_with_scoring(self) -> float:
        """``cost`` with the scoring on validation after every epoch."""
        return sum(self.seconds.values()) / self.seconds["reference"]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "cost": self.cost, "cost_with_scoring": self.cost_with_scoring}

    @property
    def chosen(self) -> Probe | None:
        return next((p for p in self.probes if p.verdict == "holds"), None)

    @property
    def untried(self) -> list[Probe]:
        """The levels the budget stopped before: the answer says nothing about them."""
        return [p for p in self.probes if p.verdict.startswith("not tried")]

    def __str__(self) -> str:
        lines = [f"{'setting':>14}  {'val ' + self.metric:>12}  {'drop':>16}  verdict"]
        for p in self.probes:
            score = f"{p.scores[-1]:.2f}" if p.scores else "-"
            drop = "-" if p.drop is None else f"{p.drop:+.2f}" + (f" ± {p.half_width:.2f}" if p.half_width else "")
            lines.append(f"{p.label:>14}  {score:>12}  {drop:>16}  {p.verdict}")
        if self.floor is not None:
            lines.append(f"{'constant':>14}  {self.floor:>12.2f}  {'':>16}  the most frequent training label, "
                         f"everywhere: the floor the reference passed")
        pick = self.chosen
        lines.append("")
        if pick is None:
            lines.append(f"choice: full fine-tuning: no level tried kept its validation drop within {self.max_drop:g}")
            if self.untried:
                lines.append("not tried within the budget: " + ", ".join(p.label for p in self.untried)
                             + " (a larger --budget tries them)")
        else:
            lines.append(f"choice: recycle {round(pick.level * 100)}% ({pick.at} blocks): validation drop "
                         f"{pick.drop:+.2f}" + (f" ± {pick.half_width:.2f} (95%)" if pick.half_width else "")
                         + f", target {self.max_drop:g}")
        lines.append(f"cost: {self.cost:.2f} full fine-tunings of fills and training (budget {self.budget:g}), "
                     f"{self.cost_with_scoring:.2f} with the scoring: " + ", ".join(
                         f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        if self.test is not None:
            lines.append("test: " + ", ".join(f"{k} {v:.2f}" for k, v in self.test.items()))
        return "\n".join(lines)


def fold_scores(task: Task, forward: Callable[..., Any], folds: int) -> list[float]:
    """The validation score of ``forward`` on each of ``folds`` disjoint parts of the validation examples."""
    if task.kind == "retrieval":  # the texts embedded once, the queries searched in parts
        view = dataclasses.replace(task, test=task.val, extra={**task.extra, **task.val_extra})
        with torch.no_grad():
            return [s[task.metric] for s in retrieval.evaluate_parts(view, forward, 64, folds)]
    if task.kind == "qa":  # windows of one question must stay together: one part
        views = [dataclasses.replace(task, test=task.val, extra={**task.extra, **task.val_extra})]
    else:
        views = [dataclasses.replace(task, test=task.val[i::folds]) for i in range(folds)]
    return [v.evaluate(forward)[task.metric] for v in views if v.test]


def constant_scores(task: Task, folds: int) -> list[float] | None:
    """Per part of the validation examples, the score of ``task.constant()``: what a model that learned nothing
    reaches. None for tasks without one label an example (retrieval, qa)."""
    constant = task.constant()
    return None if constant is None else fold_scores(task, constant, folds)


def choose(task: Task, make_model: Callable[[], nn.Module], max_drop: float, cfg: TrainConfig,
           levels: Sequence[float] = LEVELS, folds: int = 5, budget: float = 2.0, confirm: bool = False,
           echo: Callable[[str], None] = print) -> Choice:
    """The most recycled of ``levels`` whose validation drop against full fine-tuning is within ``max_drop``
    points (see the module's docstring); ``confirm`` scores it and the reference once on test.

    Raises:
        ValueError: the task has no validation examples (the choice is made on them), or ``folds`` < 1.
        ReferenceDidNotLearn: full fine-tuning ended no better on validation than a constant prediction.
    """
    if not task.val:
        raise ValueError(f"{task.dataset}: no validation examples; choose picks a level on validation (--val 0.1 "
                         f"holds out a tenth of the training data, or pass --val-file)")
    if folds < 1:
        raise ValueError(f"folds={folds}: expected at least 1 part of the validation examples")
    seconds = dict.fromkeys(("reference", "fill", "training", "scoring"), 0.0)
    torch.manual_seed(cfg.seed)
    reference, full_model = _train(task, make_model(), None, cfg, folds, seconds, "reference", echo)
    floor = constant_scores(task, folds)
    floor = None if floor is None else sum(floor) / len(floor)
    if floor is not None and reference.scores[-1] <= floor:
        per_epoch = ", ".join(f"{s:.2f}" for s in reference.scores)
        raise ReferenceDidNotLearn(
            f"full fine-tuning (the reference every level is compared with) ended at {reference.scores[-1]:.2f} "
            f"validation {task.metric} after {len(reference.scores)} epochs ({per_epoch}), no better than predicting "
            f"the training examples' most frequent label everywhere ({floor:.2f}): it learned nothing, so every level "
            f"would hold against it. Expected a reference above that floor; train longer (--epochs, now "
            f"{cfg.epochs}), change the learning rate (--lr, now {cfg.lr:g}) or check the labels")
    recs, states = _fill(task, make_model, sorted(set(levels)), cfg, seconds)
    probes, chosen, level = [reference], None, None
    for level in sorted(recs, reverse=True):
        rec = recs[level]
        label = f"recycled {round(level * 100)}%"
        untried = over_budget(probes, seconds, rec.num_layers, rec.at, cfg.epochs, budget, label, level)
        if untried is not None:
            probes.append(untried)
            continue
        torch.set_rng_state(states[level])  # as a sweep's run: the head made, then training
        probe, _ = _train(task, rec, reference, cfg, folds, seconds, "training", echo, max_drop, level)
        probes.append(probe)
        if probe.verdict == "holds":
            chosen = rec
            break
    choice = Choice(level if chosen is not None else None, chosen.at if chosen is not None else None, max_drop,
                    task.metric, probes, seconds, budget, floor=floor,
                    num_layers=next(iter(recs.values())).num_layers if recs else None)
    if confirm:  # once, on test: the choice is not revised by it
        choice.test = {"full": task.evaluate(full_model)[task.metric]}
        if chosen is not None:
            choice.test[f"recycled {round(level * 100)}%"] = task.evaluate(chosen.eval())[task.metric]
    return choice


def over_budget(probes: Sequence[Probe], seconds: dict[str, float], num_layers: int, at: int, epochs: int,
                budget: float, label: str, level: float) -> Probe | None:
    """The probe of a level left untried, when a more recycled level was left untried or its predicted seconds
    (``predicted_seconds``) would take the cost so far past ``budget`` full fine-tunings; else None: try it."""
    guess = predicted_seconds(probes, num_layers, at, epochs)
    spent = sum(seconds.values()) - seconds["scoring"]
    if not probes[-1].verdict.startswith("not tried") and spent + guess <= budget * seconds["reference"]:
        return None
    about = f"{guess:.1f}" if guess < 10 else f"{guess:.0f}"
    return Probe(label, level, at, verdict=f"not tried: about {about} s more would pass the budget of {budget:g} "
                                           f"full fine-tunings")


def predicted_seconds(probes: Sequence[Probe], num_layers: int, at: int, epochs: int) -> float:
    """The training seconds of a level that recycles ``at`` of ``num_layers`` blocks, for ``epochs``: a line through
    the seconds per epoch of the reference (``probes[0]``, every block) and of the last probe that trained blocks,
    against the blocks they trained (a fixed part, the head's and the batches', plus a part per block); before any
    probe trained blocks, the reference's share of blocks."""
    reference = probes[0]
    per_epoch = reference.train_s / len(reference.scores)
    measured = [p for p in probes[1:] if p.train_s > 0 and 0 < p.at < num_layers and p.scores]
    if not measured:
        return per_epoch * (num_layers - at) / num_layers * epochs
    last = measured[-1]
    last_per_epoch, last_blocks = last.train_s / len(last.scores), num_layers - last.at
    per_block = (per_epoch - last_per_epoch) / (num_layers - last_blocks)
    return max(0.0, last_per_epoch + per_block * (last.at - at)) * epochs


def _fill(task: Task, make_model: Callable[[], nn.Module], levels: list[float], cfg: TrainConfig,
          seconds: dict[str, float]) -> tuple[dict[float, Recycled], dict[float, torch.Tensor]]:
    """Each level's recycled model (its head made as a sweep's run makes it) with its store filled, stacked."""
    recs, states, below = {}, {}, None
    for level in levels:
        torch.manual_seed(cfg.seed)
        rec = recycle(make_model(), at=level, store=MemoryStore())
        if below is not None and below.at == rec.at:  # two fractions of one block count: one is tried
            continue
        states[level] = torch.get_rng_state()
        start = time.process_time()
        rec.fill(task.fill_examples(), batch_size=cfg.batch_size, progress=False, start_from=below)
        seconds["fill"] += time.process_time() - start
        recs[level], below = rec, rec
    return recs, states


def _train(task: Task, forward: nn.Module, reference: Probe | None, cfg: TrainConfig, folds: int,
           seconds: dict[str, float], account: str, echo: Callable[[str], None], max_drop: float = 0.0,
           level: float | None = None) -> tuple[Probe, nn.Module]:
    """Train ``forward`` for up to ``cfg.epochs``, scored on validation after each; with a ``reference``, stop when
    the drop is clearly past ``max_drop`` and not recovering (``not_recovering``)."""
    setting = Setting("full") if level is None else Setting("recycled", level)
    probe = Probe(setting.label, level, getattr(forward, "at", 0), verdict="reference" if reference is None else "")
    params = [p for p in forward.parameters() if p.requires_grad]

    def after(epoch: int) -> bool:
        start = time.process_time()
        forward.eval()
        parts = fold_scores(task, forward, folds)
        probe.eval_s += time.process_time() - start
        if reference is None:
            probe.folds.append(parts)
            probe.scores.append(sum(parts) / len(parts))
            return True
        return not judge(probe, reference, parts, epoch, cfg.epochs, max_drop)

    batches = _train_batches(task, forward, cfg)
    start = time.process_time()
    try:
        train_epochs(forward, batches, params, cfg.lr, cfg.epochs, setting.label, task.training_loss, after)
    except NothingToTrain:
        after(cfg.epochs)  # every block recycled, no head: the pretrained model's score
    probe.train_s = time.process_time() - start - probe.eval_s
    seconds[account] += probe.train_s
    seconds["scoring"] += probe.eval_s
    if not probe.verdict:
        probe.verdict = "holds" if probe.drop <= max_drop else "fails"
    echo(f"{probe.label:>16}  val {task.metric} {probe.scores[-1]:6.2f}  {probe.verdict}")
    return probe, forward


def judge(probe: Probe, reference: Probe, parts: list[float], epoch: int, epochs: int, max_drop: float,
          against: int | None = None) -> bool:
    """Record ``parts``, the probe's validation scores per part after ``epoch`` of ``epochs``, and its drop against
    the reference at epoch ``against`` (default ``epoch``); True when it stops there (``not_recovering``), its
    verdict said."""
    probe.folds.append(parts)
    probe.scores.append(sum(parts) / len(parts))
    _drop(probe, reference, against or epoch)
    probe.drops.append(probe.drop)
    probe.behind.append(probe.drop - 2 * (probe.se or 0.0) > max_drop)
    if epoch < epochs and not_recovering(probe):
        probe.verdict = f"fails after epoch {epoch} of {epochs}"
        return True
    return False


def not_recovering(probe: Probe) -> bool:
    """Whether the probe's last two epochs were both clearly past the target (``behind``) and its drop did not
    narrow from one to the other: the only early stop (one bad epoch can be a slow start)."""
    return len(probe.drops) >= 2 and all(probe.behind[-2:]) and probe.drops[-1] >= probe.drops[-2]


def _drop(probe: Probe, reference: Probe, epoch: int) -> None:
    """The probe's drop against the reference at ``epoch`` (the reference's last when it trained fewer), paired
    per fold."""
    ref = reference.folds[min(epoch, len(reference.folds)) - 1]
    drops = [r - s for r, s in zip(ref, probe.folds[-1])]
    probe.drop, sd, probe.half_width = interval(drops)
    probe.se = None if sd is None else sd / len(drops) ** 0.5
