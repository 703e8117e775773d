"""Acquisition scores of pool-based active learning, from the per-sample predictive ``[S, N, C]``.

* ``bald``: the mutual information between the answer and the posterior sample,
  ``H(mean_s p_s) - mean_s H(p_s)`` (Houlsby et al. 2011, arXiv:1112.5745; Gal et al., ICML 2017),
  the epistemic part of the predictive entropy: zero for one sample or a deterministic model;
* ``entropy``: ``H(mean_s p_s)``, the model average's entropy (total uncertainty);
* ``least_confidence``: ``1 - max_c mean_s p_s``;
* ``random``: a seeded uniform draw.

A round acquires the ``k`` highest scores (ties by pool order): top-k, not the joint BatchBALD.
"""

from __future__ import annotations

import torch

from scalabl.choices import Acquisition
from scalabl.metrics import mutual_information_per_example, predictive_entropy
from scalabl.predict import bayesian_model_average


def acquisition_scores(sample_log_probs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per question ``[N]`` float64, higher = more worth a label (``kind`` not ``random``)."""
    kind = Acquisition.parse(kind, "acquisition")
    if kind == Acquisition.RANDOM:
        raise ValueError("acquisition: random has no score; use select()")
    if kind == Acquisition.BALD:
        return mutual_information_per_example(sample_log_probs)
    probs = bayesian_model_average(sample_log_probs).exp()
    if kind == Acquisition.ENTROPY:
        return predictive_entropy(probs)
    return 1.0 - probs.max(-1).values


def top_k(scores: torch.Tensor, k: int) -> list[int]:
    """Positions of the ``k`` highest scores, ties broken by position (a stable order)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return order[:k]


def random_k(n: int, k: int, seed: int) -> list[int]:
    """``k`` of ``range(n)`` drawn uniformly without replacement, seeded."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].tolist()
