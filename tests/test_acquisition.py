"""Acquisition scores against hand computations on small arrays (numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scalabl.acquisition import acquisition_scores, random_k, top_k


def _samples(probs: list) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()


def test_bald_entropy_and_least_confidence_by_hand():
    # two samples, two questions, three choices (the third absent in question 1: probability 0)
    p = np.array([[[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]], [[0.1, 0.2, 0.7], [0.5, 0.5, 0.0]]])
    lp = torch.from_numpy(p).log()
    mean = p.mean(0)

    def h(q):
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    entropy = [h(mean[n]) for n in range(2)]
    bald = [entropy[n] - (h(p[0, n]) + h(p[1, n])) / 2 for n in range(2)]
    assert acquisition_scores(lp, "entropy").tolist() == pytest.approx(entropy)
    assert acquisition_scores(lp, "bald").tolist() == pytest.approx(bald)
    assert acquisition_scores(lp, "least_confidence").tolist() == pytest.approx(list(1 - mean.max(-1)))
    assert bald[1] == pytest.approx(0.0, abs=1e-12) and bald[0] > 0  # agreeing samples: no epistemic part
    assert entropy[1] == pytest.approx(math.log(2))


def test_one_sample_has_no_bald():
    lp = _samples([[[0.3, 0.7], [0.9, 0.1]]])
    assert torch.all(acquisition_scores(lp, "bald") == 0)


def test_top_k_breaks_ties_by_position_and_random_is_seeded():
    assert top_k(torch.tensor([0.1, 0.5, 0.5, 0.9]), 3) == [3, 1, 2]
    a, b = random_k(10, 4, seed=3), random_k(10, 4, seed=3)
    assert a == b and len(set(a)) == 4 and all(0 <= i < 10 for i in a)
    assert random_k(10, 4, seed=4) != a


def test_unknown_or_random_kind_is_refused():
    lp = _samples([[[0.5, 0.5]]])
    with pytest.raises(ValueError, match="acquisition"):
        acquisition_scores(lp, "margin")
    with pytest.raises(ValueError, match="random"):
        acquisition_scores(lp, "random")
