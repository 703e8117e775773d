"""Conformal answer sets and selective answering: the guarantees hold on synthetic data with known
probabilities, over many random calibration draws, and the pieces match hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from scalabl.decisions import (
    Decisions,
    binomial_cdf,
    conformal_quantile,
    conformal_scores,
    fit_conformal,
    fit_selective,
)


def calibrated(n: int, c: int, rng: np.random.Generator, concentration: float = 0.7):
    """A perfectly calibrated model: p ~ Dirichlet, the label ~ Categorical(p)."""
    p = rng.dirichlet([concentration] * c, size=n)
    labels = np.array([rng.choice(c, p=row) for row in p])
    return torch.tensor(np.log(p)), torch.tensor(labels)


def test_scores_by_hand():
    log_probs = torch.tensor([[0.5, 0.3, 0.2], [0.25, 0.25, 0.5]]).log()
    lac = conformal_scores(log_probs, "lac")
    assert torch.allclose(lac, torch.tensor([[0.5, 0.7, 0.8], [0.75, 0.75, 0.5]], dtype=torch.float64))
    aps = conformal_scores(log_probs, "aps")
    # mass ranked above plus its own; the tie (0.25, 0.25) keeps the choices' order
    assert torch.allclose(aps, torch.tensor([[0.5, 0.8, 1.0], [0.75, 1.0, 0.5]], dtype=torch.float64))
    absent = torch.tensor([[math.log(0.6), math.log(0.4), -math.inf]])
    assert conformal_scores(absent, "aps")[0, 2] == math.inf == conformal_scores(absent, "lac")[0, 2]


def test_quantile_is_the_finite_sample_rank():
    scores = torch.arange(1, 10, dtype=torch.float64)  # n = 9
    assert conformal_quantile(scores, 0.1) == 9.0  # k = ceil(10 * 0.9) = 9
    assert conformal_quantile(scores, 0.2) == 8.0  # k = 8
    assert conformal_quantile(scores, 0.5) == 5.0  # k = 5
    assert conformal_quantile(scores, 0.05) == math.inf  # k = 10 > n
    with pytest.raises(ValueError, match="alpha"):
        conformal_quantile(scores, 1.0)


@pytest.mark.parametrize("score", ["lac", "aps"])
def test_conformal_coverage_holds_over_random_splits(score):
    rng = np.random.default_rng(0)
    alpha, n_cal, n_test, splits = 0.1, 200, 200, 300
    log_probs, labels = calibrated(n_cal + n_test, 4, rng)
    coverages, sizes = [], []
    for _ in range(splits):
        perm = torch.tensor(rng.permutation(n_cal + n_test))
        cal, test = perm[:n_cal], perm[n_cal:]
        rule = fit_conformal(log_probs[cal], labels[cal], alpha, score)
        m = Decisions([rule], fit_selective(log_probs[cal], labels[cal], 0.2)).metrics(
            log_probs[test], labels[test]
        )
        coverages.append(m[score]["coverage"])
        sizes.append(m[score]["mean_set_size"])
    mean = float(np.mean(coverages))
    # marginal guarantee: 1 - alpha <= E[coverage] <= 1 - alpha + 1/(n+1); the band is 4 standard errors
    # of the mean over splits (the splits share one pool, so their spread is the honest yardstick)
    se = float(np.std(coverages)) / math.sqrt(splits)
    assert 1 - alpha - 4 * se <= mean <= 1 - alpha + 1 / (n_cal + 1) + 4 * se
    # a single split's coverage is Beta-distributed around 1 - alpha: most splits are near it
    assert np.mean(np.abs(np.array(coverages) - (1 - alpha)) < 0.1) > 0.95
    assert 1.0 < float(np.mean(sizes)) < 4.0  # informative: neither singletons nor everything


def test_lac_gives_smaller_sets_than_aps_on_a_calibrated_model():
    rng = np.random.default_rng(1)
    log_probs, labels = calibrated(2000, 4, rng)
    lac = fit_conformal(log_probs[:1000], labels[:1000], 0.1, "lac")
    aps = fit_conformal(log_probs[:1000], labels[:1000], 0.1, "aps")
    assert lac.sets(log_probs[1000:]).sum() < aps.sets(log_probs[1000:]).sum()


def test_binomial_cdf_matches_scipy():
    for k, n, p in [(0, 1, 0.1), (3, 10, 0.2), (12, 200, 0.1), (50, 400, 0.15), (10, 10, 0.5)]:
        assert binomial_cdf(k, n, p) == pytest.approx(binom.cdf(k, n, p), rel=1e-9, abs=1e-300)


def test_selective_risk_holds_over_random_splits():
    """The chosen threshold's true selective risk (on a large test set) exceeds the target in at
    most a delta share of calibration draws."""
    rng = np.random.default_rng(2)
    target, delta, n_cal, n_test, splits = 0.2, 0.1, 1000, 6000, 100
    log_probs, labels = calibrated(n_cal * splits + n_test, 4, rng, concentration=0.3)
    test_lp, test_y = log_probs[-n_test:], labels[-n_test:]
    violations, coverages = 0, []
    for s in range(splits):
        cal = slice(s * n_cal, (s + 1) * n_cal)
        rule = fit_selective(log_probs[cal], labels[cal], target, delta)
        m = Decisions([], rule).metrics(test_lp, test_y)["selective"]
        coverages.append(m["coverage"])
        if m["risk"] is not None and m["risk"] > target:
            violations += 1
    # P(violation) <= delta; allow the binomial spread of the draws above it
    assert violations / splits <= delta + 2 * math.sqrt(delta * (1 - delta) / splits)
    assert np.mean(coverages) > 0.25  # the target is reachable: the rule answers a good share


def test_selective_rule_by_hand_and_its_edges():
    # 10 questions, confidences 0.95 .. 0.5, the two least confident wrong
    probs = torch.tensor([[c, 1 - c] for c in np.linspace(0.95, 0.5, 10)])
    labels = torch.tensor([0] * 8 + [1] * 2)
    rule = fit_selective(probs.log(), labels, target_risk=0.5, delta=0.5, candidates=2)
    # candidate 1: the top 5, no error: P(Bin(5, .5) <= 0) = 1/32 <= 0.25 -> certified;
    # candidate 2: all 10, 2 errors: P(Bin(10, .5) <= 2) = 56/1024 <= 0.25 -> certified, the lowest
    assert rule.threshold == pytest.approx(0.5) and rule.calibration_coverage == 1.0
    assert rule.calibration_risk == pytest.approx(0.2)
    never = fit_selective(probs.log(), labels, target_risk=0.01, delta=0.05)
    assert never.threshold == math.inf and never.calibration_risk is None
    assert not never.answers(probs.log()).any()


def test_decisions_round_trip_and_decide():
    rng = np.random.default_rng(3)
    log_probs, labels = calibrated(300, 3, rng)
    decisions = Decisions(
        [fit_conformal(log_probs, labels, 0.1, "lac"), fit_conformal(log_probs, labels, 0.1, "aps")],
        fit_selective(log_probs, labels, 0.2),
        {"n_samples": 4},
    )
    again = Decisions.from_dict(decisions.to_dict())
    assert again == decisions
    per_question = again.decide(log_probs[:5])
    assert len(per_question) == 5 and set(per_question[0]) == {"set_lac", "set_aps", "answer"}
    mask = decisions.conformal[0].sets(log_probs[:5])
    assert per_question[2]["set_lac"] == torch.nonzero(mask[2]).flatten().tolist()
