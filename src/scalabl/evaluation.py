"""Evaluating a run: the test split (and the shifted tasks) at every sample count, every metric.

Each evaluation is one :class:`scalabl.config.PredictConfig` per sample count S; with several
processes each predicts every world-th example and all gather the whole (FSDP: every process runs
every forward). Results come back as metrics.json's ``eval`` and ``ood`` sections (their format:
:mod:`scalabl.results`) and the predictions are written to the run folder.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from scalabl import distributed
from scalabl.api import BayesianLoRA, Prediction
from scalabl.choices import EvalSplit
from scalabl.config import PredictConfig, RunConfig
from scalabl.data import load_splits
from scalabl.examples import Example
from scalabl.metrics import compute_metrics, mutual_information, ood_auroc
from scalabl.results import eval_key, labels_key, predictions_key
from scalabl.run_folder import RunFolder


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


def evaluate_model(
    blora: BayesianLoRA, config: RunConfig, out: str | Path, *, progress: bool = True
) -> dict[str, Any]:
    """Evaluate on the test split for every S in ``config.n_samples`` (and on ``config.ood`` tasks);
    writes the predictions into the run folder ``out``.

    Each shifted task's test split gets the same metrics, plus the AUROC of telling the
    in-distribution test questions (positive) from its questions by max probability and by
    predictive entropy.
    """
    splits = config.splits()
    test = splits.validation if config.eval_split == EvalSplit.VALIDATION else splits.test
    if config.max_test:
        test = test[: config.max_test]
    labels = torch.tensor([e.label for e in test])
    tensors: dict[str, torch.Tensor] = {labels_key(): labels}
    counts = blora.method.sample_counts(config.n_samples)

    def evaluated(
        examples: Sequence[Example], labels: torch.Tensor, s: int
    ) -> tuple[dict[str, Any], torch.Tensor]:
        """The metrics entry of ``examples`` at S = ``s`` and its predictive log-probs."""
        t0 = time.perf_counter()
        prediction = predict_sharded(
            blora, examples, config.predict_config(s, progress=progress), config.fsdp
        )
        entry = {
            **compute_metrics(prediction.log_probs, labels),
            "mi": mutual_information(prediction.samples),  # how much the S samples disagree (0 for S <= 1)
            "seconds": time.perf_counter() - t0,
            "n_samples": s,
        }
        return entry, prediction.log_probs

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
            entry, log_probs = evaluated(shifted, shifted_labels, s)
            probs = log_probs.exp()
            entry["auroc_max_prob"] = ood_auroc(in_probs[s], probs, "max_prob")
            entry["auroc_entropy"] = ood_auroc(in_probs[s], probs, "entropy")
            ood[task][eval_key(s)] = entry
            tensors[predictions_key(s, task)] = log_probs
    RunFolder(out).write_predictions(tensors)
    return {"n_test": len(test), "eval": results, "ood": ood}
