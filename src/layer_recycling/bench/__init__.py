"""The tradeoff harness: full fine-tuning, frozen-without-cache and each recycling level on one task.

``sweep`` runs the settings in one process on the same data and writes one JSON result per run;
``report`` turns a folder of results into a table, a plot and a recommendation.
"""

from __future__ import annotations

from .reporting import markdown, report, summarize
from .runner import run, sweep
from .settings import Setting, TrainConfig, default_settings
from .tasks import Task

__all__ = ["Setting", "Task", "TrainConfig", "default_settings", "markdown", "report", "summarize", "sweep"]
