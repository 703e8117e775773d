"""Evaluating a run: the test split (and the shifted tasks) at every sample count, every metric.

Each evaluation is one :class:`scalabl.config.PredictConfig` per sample count S; with several
processes each predicts every world-th example and all gather the whole (FSDP: every process runs
every forward). Results come back as metrics.json's ``eval`` and ``ood`` sections (their format:
:mod:`scalabl.results`) and the predictions are written to the run folder.

A temperature fitted on top of a finished run (``from_run`` a run of the same method and settings)
changes only the model average: the source's stored predictions, tempered, are this run's, so they
are read back instead of scored again (:func:`untempered_source`), an S-sample pass over the test
split saved per evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from scalabl import distributed
from scalabl.api import BayesianLoRA, Prediction
from scalabl.calibration import apply_temperature
from scalabl.choices import EvalSplit
from scalabl.config import PredictConfig, RunConfig
from scalabl.data import load_splits
from scalabl.examples import Example
from scalabl.metrics import compute_metrics, mutual_information, ood_auroc
from scalabl.results import entry, eval_key, labels_key, predictions_key
from scalabl.run_folder import PREDICTIONS_FILE, RunFolder


def predict_sharded(
    blora: BayesianLoRA, examples: Sequence[Example], config: PredictConfig, fsdp: bool
) -> Prediction:
    """``blora.predict`` over every example, split across data-parallel processes and gathered."""
    # under FSDP every process must run the same forwards: no split
    mine = examples if fsdp else distributed.shard(examples)
    prediction = blora.predict(mine, config)
    if distributed.world() == 1 or fsdp:
        return prediction
    c_max = max(len(e.choices) for e in examples)  # shards may hold fewer choices: pad with -inf

    def gathered(t: torch.Tensor, dim: int) -> torch.Tensor:
        t = F.pad(t, (0, c_max - t.shape[-1]), value=float("-inf"))
        return distributed.unshard(t, len(examples), dim=dim)

    return Prediction(gathered(prediction.log_probs, 0), gathered(prediction.samples, 1))


def _prediction_settings(config: RunConfig) -> dict[str, Any]:
    """What decides a run's test predictions once its adapter is fixed: the data, the scoring, the
    evaluation and the noise seed (not the training settings, the sample counts or the temperature)."""
    settings = replace(config, from_run=None, ood=(), max_validation=None).to_dict()
    settings.pop("n_samples")
    settings["method"].pop("temperature")
    settings["seed"] = settings.pop("train")["seed"]
    return settings


def untempered_source(config: RunConfig, blora: BayesianLoRA) -> RunFolder | None:
    """The run whose stored predictions are ``blora``'s before its temperature, or None: the run
    ``init_from`` took whole (same method and settings), evaluated with the same data, scoring and
    seed, with its predictions file present."""
    if blora.same_as_run is None or blora.temperature is None or distributed.world() > 1:
        return None
    source = RunFolder(blora.same_as_run)
    if not (source.path / PREDICTIONS_FILE).is_file():
        return None
    same = _prediction_settings(source.read_config()) == _prediction_settings(config)
    return source if same else None


def evaluate_model(
    blora: BayesianLoRA,
    config: RunConfig,
    out: str | Path,
    *,
    progress: bool = True,
    untempered: RunFolder | None = None,
) -> dict[str, Any]:
    """Evaluate on the test split for every S in ``config.n_samples`` (and on ``config.ood`` tasks);
    writes the predictions into the run folder ``out``.

    Each shifted task's test split gets the same metrics, plus the AUROC of telling the
    in-distribution test questions (positive) from its questions by max probability and by
    predictive entropy.

    ``untempered`` (see :func:`untempered_source`): a run whose stored predictions are this model's
    before its fitted temperature; an evaluation it holds (same S, same labels) is read from it and
    tempered instead of predicted again, its mutual information taken from its metrics (the samples
    are not tempered, so it is the same).
    """
    splits = config.splits()
    test = splits.validation if config.eval_split == EvalSplit.VALIDATION else splits.test
    if config.max_test:
        test = test[: config.max_test]
    labels = torch.tensor([e.label for e in test])
    tensors: dict[str, torch.Tensor] = {labels_key(): labels}
    counts = blora.method.sample_counts(config.n_samples)
    stored = load_file(str(untempered.path / PREDICTIONS_FILE)) if untempered is not None else {}
    stored_metrics = untempered.read_metrics() if untempered is not None else {}

    def evaluated(
        examples: Sequence[Example], labels: torch.Tensor, s: int, task: str | None = None
    ) -> tuple[dict[str, Any], torch.Tensor]:
        """The metrics entry of ``examples`` at S = ``s`` and its predictive log-probs."""
        t0 = time.perf_counter()
        section = (
            stored_metrics.get("eval", {}) if task is None else stored_metrics.get("ood", {}).get(task, {})
        )
        before = entry(section, s)
        key = predictions_key(s, task)
        reused = key in stored and "mi" in before and torch.equal(stored[labels_key(task)], labels)
        if reused:
            log_probs, mi = apply_temperature(stored[key], blora.temperature), before["mi"]
        else:
            prediction = predict_sharded(
                blora, examples, config.predict_config(s, progress=progress), config.fsdp
            )
            # how much the S samples disagree (0 for S <= 1)
            log_probs, mi = prediction.log_probs, mutual_information(prediction.samples)
        result = {
            **compute_metrics(log_probs, labels),
            "mi": mi,
            "seconds": time.perf_counter() - t0,
            "n_samples": s,
        }
        if reused:
            result["tempered_from"] = str(untempered.path)
        return result, log_probs

    results: dict[str, Any] = {}
    in_probs: dict[int, torch.Tensor] = {}
    for s in counts:
        results[eval_key(s)], tensors[predictions_key(s)] = evaluated(test, labels, s)
        in_probs[s] = tensors[predictions_key(s)].exp()
    ood: dict[str, Any] = {}
    for task in config.ood:
        shifted = load_splits(task, seed=config.split_seed, source=config.source).test
        shifted = shifted[: config.max_test] if config.max_test else shifted
        shifted_labels = torch.tensor([e.label for e in shifted])
        tensors[labels_key(task)] = shifted_labels
        ood[task] = {"n_test": len(shifted)}
        for s in counts:
            shifted_entry, log_probs = evaluated(shifted, shifted_labels, s, task)
            probs = log_probs.exp()
            shifted_entry["auroc_max_prob"] = ood_auroc(in_probs[s], probs, "max_prob")
            shifted_entry["auroc_entropy"] = ood_auroc(in_probs[s], probs, "entropy")
            ood[task][eval_key(s)] = shifted_entry
            tensors[predictions_key(s, task)] = log_probs
    RunFolder(out).write_predictions(tensors)
    return {"n_test": len(test), "eval": results, "ood": ood}
