"""The format of a run's results, in one place: how a sample count names an entry of metrics.json
and a tensor of predictions.safetensors, and how to read them back as integers.

metrics.json keeps one entry per sample count S under ``"eval"`` (and under each shifted task of
``"ood"``), keyed ``"S=10"`` and holding ``"n_samples": 10``; predictions.safetensors holds
``log_probs_S10`` (and ``ood.TASK.log_probs_S10``). Code reads the integer ``n_samples`` of an
entry, never its key.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def eval_key(n_samples: int) -> str:
    """The metrics.json key of the evaluation with ``n_samples`` posterior samples."""
    return f"S={n_samples}"


def predictions_key(n_samples: int, task: str | None = None) -> str:
    """The predictions.safetensors name of the log-probs with ``n_samples`` samples (of a shifted task)."""
    name = f"log_probs_S{n_samples}"
    return name if task is None else f"ood.{task}.{name}"


def labels_key(task: str | None = None) -> str:
    return "labels" if task is None else f"ood.{task}.labels"


def evaluations(entries: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(S, metrics)`` for each evaluation in a metrics.json section (``"eval"`` or one shifted
    task's), in the order they were run; other keys (a shifted task's ``n_test``) are skipped."""
    for value in entries.values():
        if isinstance(value, dict) and "n_samples" in value:
            yield int(value["n_samples"]), value


def headline(metrics: dict[str, Any]) -> int:
    """The sample count a table reports for a run: its first (S for Bayesian methods)."""
    return next(evaluations(metrics["eval"]))[0]


def entry(section: dict[str, Any], n_samples: int) -> dict[str, Any]:
    """The evaluation with ``n_samples`` in a metrics.json section (empty if it has none)."""
    return next((r for s, r in evaluations(section) if s == n_samples), {})
