"""PRR, the accuracy-rejection curve and the wrong-vs-right AUROC against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from scalabl.rejection import prediction_rejection_ratio, rejection_curve, wrong_vs_right_auroc


def test_rejection_curve_by_hand():
    u = np.array([0.1, 0.9, 0.5, 0.3])
    q = np.array([1.0, 0.0, 1.0, 0.0])
    fraction, kept = rejection_curve(u, q)
    # most certain first: u .1 (1), .3 (0), .5 (1), .9 (0); rejecting k = 0..3 most uncertain keeps
    # the 4, 3, 2, 1 most certain: means 2/4, 2/3, 1/2, 1
    assert fraction.tolist() == [0.0, 0.25, 0.5, 0.75]
    assert kept == pytest.approx([0.5, 2 / 3, 0.5, 1.0])


def test_prr_is_one_for_the_oracle_zero_for_chance_and_negative_when_reversed():
    q = np.array([1, 1, 0, 1, 0, 0, 1, 0], dtype=float)
    assert prediction_rejection_ratio(1 - q, q) == pytest.approx(1.0)
    assert prediction_rejection_ratio(q, q) < 0
    rng = np.random.default_rng(0)
    q = (rng.random(4000) < 0.6).astype(float)
    assert abs(prediction_rejection_ratio(rng.random(4000), q)) < 0.05
    # by hand: u above, q = [1, 0, 1, 0]; A = mean(.5, 2/3, .5, 1) = 2/3; random .5;
    # oracle keeps the right ones: (.5, 2/3, 1, 1) -> 19/24; PRR = (2/3 - 1/2) / (19/24 - 1/2) = 4/7
    u = np.array([0.1, 0.9, 0.5, 0.3])
    assert prediction_rejection_ratio(u, np.array([1.0, 0.0, 1.0, 0.0])) == pytest.approx(4 / 7)
    assert np.isnan(prediction_rejection_ratio(u, np.ones(4)))


def test_wrong_vs_right_auroc():
    u = np.array([0.9, 0.8, 0.2, 0.1, 0.85])
    correct = np.array([False, False, True, True, True])
    # wrong (.9, .8) against right (.2, .1, .85): pairs above: .9 > all 3, .8 > 2 of 3 -> 5/6
    assert wrong_vs_right_auroc(u, correct) == pytest.approx(5 / 6)
