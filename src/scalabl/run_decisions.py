"""A run's decision rules: fitted on its validation split (``scalabl calibrate-decisions``), saved
as decisions.json, and scored on its test predictions in metrics.json (``decisions``) and the report.

The calibration questions must be held out from everything fitted: training never sees the
validation split, but a post-hoc fit (a temperature, TFB, Laplace) reads its first
``max_validation`` questions, so those are left out when others remain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from scalabl.api import BayesianLoRA
from scalabl.choices import EvalSplit
from scalabl.config import RunConfig
from scalabl.config.decisions import DecisionConfig
from scalabl.config.run import POST_HOC_METHODS
from scalabl.decisions import Decisions, fit_conformal, fit_selective
from scalabl.examples import Example
from scalabl.results import headline, predictions_key
from scalabl.run_folder import PREDICTIONS_FILE, RunFolder


def calibration_examples(config: RunConfig, blora: BayesianLoRA) -> tuple[Sequence[Example], str]:
    """The questions the rules are fitted on, and a note saying which they are."""
    validation = config.splits().validation
    post_hoc = blora.uses_temperature or config.method.method in POST_HOC_METHODS
    if not post_hoc:
        return validation, f"validation split, all {len(validation)}"
    used = min(config.max_validation or len(validation), len(validation))
    if used < len(validation):
        return validation[used:], f"validation split after the {used} the post-hoc fit read"
    return validation, (
        f"validation split, all {len(validation)}, also read by the post-hoc fit: the guarantees are "
        "approximate (give the run a larger --n-validation or a smaller --max-validation)"
    )


def fit_run_decisions(
    folder: RunFolder,
    config: RunConfig,
    blora: BayesianLoRA,
    options: DecisionConfig,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit the rules on the run's calibration questions, write decisions.json, and score them on the
    test predictions (metrics.json's ``decisions``); returns those test metrics."""
    if config.eval_split == EvalSplit.VALIDATION:
        raise ValueError(
            f"{folder.path}: this run is evaluated on its validation split, which the decisions would be "
            "fitted on; re-evaluate it on test first"
        )
    metrics = folder.read_metrics()
    requested = options.calibration_samples if options.calibration_samples is not None else headline(metrics)
    n_samples = blora.method.samples_for(requested)
    examples, note = calibration_examples(config, blora)
    # the predictor `scalabl predict` and the server use (noise seeded per question): the rules'
    # guarantees are for the very function they are fitted on
    predict = replace(config.predict_config(n_samples, progress=progress), per_question=True)
    log_probs = blora.predict(examples, predict).log_probs
    labels = torch.tensor([e.label for e in examples])
    decisions = Decisions(
        conformal=[fit_conformal(log_probs, labels, options.alpha, score) for score in ("lac", "aps")],
        selective=fit_selective(log_probs, labels, options.risk, options.delta),
        calibration={"examples": note, "n": len(examples), "n_samples": n_samples, "seed": config.train.seed},
    )
    folder.write_decisions(decisions.to_dict())
    scored = decision_scores(folder, decisions, metrics.get("eval_split", "test"))
    metrics["decisions"] = scored
    folder.write_metrics(metrics)
    return scored


def score_decisions(folder: RunFolder, split: str) -> dict[str, Any] | None:
    """The rules saved in decisions.json scored on the run's ``split`` predictions
    (:func:`decision_scores`); None without decisions.json."""
    raw = folder.read_decisions()
    return None if raw is None else decision_scores(folder, Decisions.from_dict(raw), split)


def decision_scores(folder: RunFolder, decisions: Decisions, split: str) -> dict[str, Any] | None:
    """``decisions`` scored on the run's stored predictions at their calibration S: each set's
    coverage and mean size, the selective rule's coverage and risk. None without predictions at that S."""
    if not (folder / PREDICTIONS_FILE).is_file():
        return None
    n_samples = decisions.calibration["n_samples"]
    try:
        probs, labels = folder.predictions(n_samples)
    except KeyError:
        return None
    return {
        "split": split,
        "key": predictions_key(n_samples),
        "calibration": decisions.calibration,
        **decisions.metrics(probs.log(), labels),
    }
