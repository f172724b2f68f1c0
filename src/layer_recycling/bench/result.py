"""One run's result: what the harness measured for one setting on one task, and how the run was made.

A ``Result`` is written as one JSON object (``to_json``: the fields by name, as the harness always wrote them)
and read back with ``from_json``, which also reads files written before the later fields were recorded.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Result:
    """The measurements of one run (``runner.run``) and, once ``sweep`` adds them, what the run belongs to."""

    setting: str  # full, frozen, recycled, recycled+lora or head
    label: str  # the setting's row in a table: "recycled 50%", "recycled 50% int8", ...
    level: float  # the recycled fraction of blocks (0 for full fine-tuning)
    at: int  # blocks recycled
    codec: str | None  # how the store kept states (None: no store)
    metric: str  # the task's main metric, which ``score`` is
    score: float  # the test score, in points
    fill_s: float  # seconds to fill the store (0 without one)
    train_s_per_epoch: float  # mean seconds per training epoch
    end_to_end_s: float  # fill plus every epoch: what a speedup divides
    infer_hits_per_s: float  # test examples served per second once stored
    infer_misses_per_s: float  # test examples per second on their first pass (misses, computed and stored)
    cache_bytes: int  # the store's size
    # Set by ``sweep``: the table a result joins (task, dataset, model), the seed, and how the run was made.
    task: str = ""
    dataset: str = ""
    model: str = ""
    seed: int = 0
    meta: dict = dataclasses.field(default_factory=dict)  # library versions, git commit, machine
    # Recorded since later versions: None in results written before.
    scores: dict[str, float] | None = None  # every test metric
    fill_from_at: int | None = None  # the lower level whose store a stacked fill read
    epochs_s: list[float] | None = None  # seconds of each epoch
    trained: bool | None = None  # False: nothing above the cache to train (every block recycled, no head)
    val_score: float | None = None  # the validation score, which the recommendation reads
    val_scores: dict[str, float] | None = None
    trainable_params: int | None = None
    peak_mem_mb: float | None = None
    model_source: str | None = None  # a built-in model's name or the model folder's absolute path
    config: dict | None = None  # the training and data config (``runner.conditions``), seed included
    end_to_end_cpu_s: float | None = None  # the process's CPU seconds of the fill and every epoch (one thread: what
    # other work on the machine leaves unchanged, unlike ``end_to_end_s``)
    cache_entries: int | None = None  # entries in the store: ``cache_bytes / cache_entries`` is bytes per input
    # a constant prediction's scores (the most frequent training label everywhere: ``Task.constant``), on test and
    # validation; None for tasks without one (retrieval, qa) and in older results
    constant_score: float | None = None
    constant_val_score: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of a result file, fields in the order the harness writes them."""
        return dict(_ORDER, **dataclasses.asdict(self))

    @classmethod
    def from_json(cls, doc: Any, where: str = "a result") -> Result:
        """A result from its JSON object; later fields absent from an older file are None. Keys this version
        does not know are ignored.

        Raises:
            ValueError: ``doc`` is not an object, or lacks a field every result has (``REQUIRED``).
        """
        missing = [f for f in REQUIRED if f not in doc] if isinstance(doc, dict) else list(REQUIRED)
        if missing:
            raise ValueError(f"{where} is not a benchmark result: it lacks {missing}")
        return cls(**{f.name: doc[f.name] for f in dataclasses.fields(cls) if f.name in doc})


# Fields every result file holds, however old (the rest were added later).
REQUIRED = ("task", "dataset", "model", "setting", "label", "level", "at", "codec", "metric", "score", "fill_s",
            "train_s_per_epoch", "end_to_end_s", "infer_hits_per_s", "infer_misses_per_s", "cache_bytes", "seed",
            "meta")
# The key order of the files ``sweep`` wrote: the run's measurements, then what ``sweep`` added.
_ORDER = dict.fromkeys(("setting", "label", "level", "at", "codec", "metric", "score", "scores", "fill_s",
                        "fill_from_at", "train_s_per_epoch", "epochs_s", "trained", "end_to_end_s", "infer_hits_per_s",
                        "infer_misses_per_s", "cache_bytes", "val_score", "val_scores", "trainable_params",
                        "peak_mem_mb", "task", "dataset", "model", "model_source", "seed", "meta", "config",
                        "end_to_end_cpu_s", "cache_entries",  # recorded since the head setting
                        "constant_score", "constant_val_score"))
