"""Timing helpers shared by the benchmark scripts: wall time of a call, and the environment every result records."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from layer_recycling.bench.runner import environment


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(what ``fn()`` returns, its wall time in seconds)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def seconds(fn: Callable[[], Any]) -> float:
    """Wall time of ``fn()`` in seconds."""
    return timed(fn)[1]


def meta() -> dict:
    """Versions, git commit and machine, as every harness result records them."""
    return environment()


def write_result(path: Path, args: Any, results: dict) -> dict:
    """Write ``{"config", "results", "meta"}`` as JSON to ``path`` (its folder made); returns it."""
    out = {"config": {k: str(v) for k, v in vars(args).items()}, "results": results, "meta": meta()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    return out
