"""Answers for new questions (``scalabl predict``): one JSON line per question with the probabilities,
the chosen answer, its confidence, the total and epistemic uncertainty, and the run's decisions.

The output is resumable (:mod:`scalabl.resumable`): an interrupted run leaves no half-written
``OUT``, and the same command resumes after the last complete line. Each question's noise is seeded by its own text
(``PredictConfig.per_question``), so a resumed run, a different batch size or the server give
each question the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from scalabl.api import BayesianLoRA
from scalabl.config import PredictConfig
from scalabl.decisions import Decisions
from scalabl.examples import Example
from scalabl.metrics import mutual_information_per_example, predictive_entropy
from scalabl.resumable import write_resumable
from scalabl.run_folder import RunFolder
from scalabl.runs import load_run


@dataclass(frozen=True)
class Answerer:
    """A loaded run that answers questions: its model, how it predicts, and its decision rules."""

    blora: BayesianLoRA
    config: PredictConfig  # per_question is set: answers do not depend on batching
    decisions: Decisions | None = None

    def answer(self, examples: Sequence[Example]) -> list[dict[str, Any]]:
        """One answer record per question (see :func:`answer_record`)."""
        prediction = self.blora.predict(examples, self.config)  # the model average, tempered if fitted
        entropy = predictive_entropy(prediction.log_probs.exp())
        mi = mutual_information_per_example(prediction.samples)
        if self.decisions is not None:
            decided: list[dict[str, Any] | None] = list(self.decisions.decide(prediction.log_probs))
        else:
            decided = [None] * len(examples)
        n = prediction.samples.shape[0]
        return [
            answer_record(e, prediction.log_probs[i], entropy[i].item(), mi[i].item(), n, decided[i])
            for i, e in enumerate(examples)
        ]


def load_answerer(run_dir: str | Path, **predict_options: Any) -> tuple[Answerer, list[str]]:
    """A run folder's model, its decision rules (if fitted) and how it predicts: the run's own first
    sample count, batch size and seed unless ``predict_options`` (PredictConfig fields) say otherwise,
    with per-question noise. Returns the answerer and warnings for the user."""
    folder = RunFolder(run_dir)
    config, blora = load_run(run_dir)
    options = dict(predict_options)
    n_samples = options.pop("n_samples", config.n_samples[0])
    predict = replace(config.predict_config(n_samples), per_question=True, **options)
    raw = folder.read_decisions()
    decisions = Decisions.from_dict(raw) if raw is not None else None
    warnings = []
    effective = blora.method.samples_for(predict.n_samples)
    if decisions is not None and decisions.calibration.get("n_samples") != effective:
        warnings.append(
            f"the run's decisions were calibrated with S = {decisions.calibration.get('n_samples')}; "
            f"their guarantees are for that S, not {effective}"
        )
    return Answerer(blora, predict, decisions), warnings


def answer_record(
    example: Example,
    log_probs: torch.Tensor,
    entropy: float,
    mutual_information: float,
    n_samples: int,
    decision: dict[str, Any] | None,
) -> dict[str, Any]:
    """What ``predict`` writes for one question: ``id``, ``probs`` (one per choice), ``choice`` and
    ``choice_text``, ``confidence``, ``entropy`` (total uncertainty, nats), ``mutual_information``
    (its epistemic part), ``n_samples``; ``answer`` and ``correct`` when the input gave one; and
    ``decision`` (conformal sets as choice indices, whether to answer) when the run has rules."""
    probs = log_probs[: len(example.choices)].exp()
    choice = int(probs.argmax())
    record: dict[str, Any] = {
        "id": example.id,
        "probs": [float(p) for p in probs],
        "choice": choice,
        "choice_text": example.choices[choice],
        "confidence": float(probs[choice]),
        "entropy": entropy,
        "mutual_information": mutual_information,
        "n_samples": n_samples,
    }
    if example.label is not None:
        record["answer"] = example.label
        record["correct"] = choice == example.label
    if decision is not None:
        record["decision"] = decision
    return record


def write_answers(
    answerer: Answerer,
    examples: Sequence[Example],
    out: str | Path,
    *,
    provenance: dict[str, Any],
    overwrite: bool = False,
    progress: bool = True,
) -> int:
    """Answer every question into ``out`` (see the module docstring); returns how many were answered
    by this call (the rest came from a partial output it resumed).

    ``provenance`` (run folder, input digest, sample count, seed) must match a partial output's for
    it to be resumed; a finished ``out`` is replaced only with ``overwrite``."""
    return write_resumable(
        examples,
        out,
        lambda batch, _start: answerer.answer(batch),
        batch_size=answerer.config.batch_size,
        provenance=provenance,
        overwrite=overwrite,
        progress=progress,
    )
