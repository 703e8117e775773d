"""Metrics checked against hand-worked numbers and independent numpy loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scalabl.metrics import (
    accuracy,
    brier_score,
    compute_metrics,
    ece_floor,
    expected_calibration_error,
    mutual_information,
    negative_log_likelihood,
    reliability_bins,
)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def y(labels) -> torch.Tensor:
    return torch.tensor(labels, dtype=torch.int64)


def random_probs(n: int = 400, c: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    return torch.softmax(logits, dim=1), torch.randint(0, c, (n,), generator=g)


# ---- independent references: plain Python loops over numpy arrays, written from the definitions ----


def ref_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int):
    """Per-bin (count, mean confidence, mean accuracy) with bins (i/n, (i+1)/n]."""
    out = []
    for i in range(n_bins):
        lo, hi = i / n_bins, (i + 1) / n_bins
        confs, hits = [], []
        for p, label in zip(probs, labels, strict=True):
            pred = int(np.argmax(p))  # numpy argmax also returns the first maximum
            if lo < p[pred] <= hi:
                confs.append(p[pred])
                hits.append(float(pred == label))
        out.append((len(confs), np.mean(confs) if confs else np.nan, np.mean(hits) if hits else np.nan))
    return out


def ref_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    n = len(labels)
    return sum(cnt / n * abs(acc - conf) for cnt, conf, acc in ref_bins(probs, labels, n_bins) if cnt)


def ref_brier(probs: np.ndarray, labels: np.ndarray) -> float:
    total = 0.0
    for p, label in zip(probs, labels, strict=True):
        total += sum((p[c] - (1.0 if c == label else 0.0)) ** 2 for c in range(len(p)))
    return total / len(labels)


def ref_nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return -sum(math.log(p[label]) for p, label in zip(probs, labels, strict=True)) / len(labels)


# ---- accuracy ----


def test_accuracy_hand():
    # argmax per row: 0, 1, 2, 0; labels 0, 1, 0, 2 -> 2 correct of 4 = 0.5
    probs = t([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    assert accuracy(probs, y([0, 1, 0, 2])) == 0.5


def test_accuracy_ties_go_to_lowest_index():
    # [0.4, 0.4, 0.2] ties between 0 and 1 -> predicted 0; uniform row -> predicted 0.
    probs = t([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2], [1 / 3, 1 / 3, 1 / 3]])
    assert accuracy(probs, y([0, 1, 0])) == pytest.approx(2 / 3)
    # labels all 1: every row predicts class 0 (rows 1-2 tie 0 and 1 for the max), so none is right
    assert accuracy(probs, y([1, 1, 1])) == 0.0


# ---- ECE and reliability bins ----


def test_ece_hand_with_confidences_on_bin_edges():
    # 5 bins: (0,.2], (.2,.4], (.4,.6], (.6,.8], (.8,1].
    # rows 1-2: conf 0.6 exactly -> bin (.4,.6]; one right, one wrong: acc 0.5, conf 0.6, gap 0.1, weight 2/3
    # row 3: conf 0.7 -> bin (.6,.8]; right: acc 1, conf 0.7, gap 0.3, weight 1/3
    # ECE = 2/3 * 0.1 + 1/3 * 0.3 = 0.0667 + 0.1 = 1/6
    # (Left-closed bins would put all three in [.6,.8): |2/3 - 1.9/3| = 1/30 -- the convention matters.)
    probs = t([[0.6, 0.4], [0.6, 0.4], [0.7, 0.3]])
    labels = y([0, 1, 0])
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(1 / 6, abs=1e-12)

    bins = reliability_bins(probs, labels, n_bins=5)
    np.testing.assert_array_equal(bins["count"], [0, 0, 2, 1, 0])
    np.testing.assert_allclose(bins["confidence"], [np.nan, np.nan, 0.6, 0.7, np.nan])
    np.testing.assert_allclose(bins["accuracy"], [np.nan, np.nan, 0.5, 1.0, np.nan])


def test_ece_hand_four_rows():
    # 5 bins. conf 0.6 (right), 0.6 (wrong) -> bin (.4,.6]: acc .5 conf .6, gap .1, weight .5 -> 0.05
    # conf 0.8 (right) -> bin (.6,.8]: gap .2, weight .25 -> 0.05;  conf 1.0 (right) -> last bin, gap 0
    # ECE = 0.1
    probs = t([[0.6, 0.4], [0.6, 0.4], [0.2, 0.8], [1.0, 0.0]])
    labels = y([0, 1, 1, 0])
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.1, abs=1e-12)
    np.testing.assert_array_equal(reliability_bins(probs, labels, n_bins=5)["count"], [0, 0, 2, 1, 1])


def test_lower_edge_confidence_goes_to_first_bin():
    # Uniform over 4 choices: conf exactly 0.25 = upper edge of the first of 4 bins (0, .25].
    # All predicted class 0; labels 0..3 -> acc 0.25 = conf, so ECE 0.
    probs = torch.full((4, 4), 0.25, dtype=torch.float64)
    labels = y([0, 1, 2, 3])
    bins = reliability_bins(probs, labels, n_bins=4)
    np.testing.assert_array_equal(bins["count"], [4, 0, 0, 0])
    assert expected_calibration_error(probs, labels, n_bins=4) == pytest.approx(0.0, abs=1e-12)


def test_ece_perfect_calibration_is_zero():
    # 10 rows with conf 0.7 of which 7 correct: bin (.6,.7] has acc 0.7 = conf 0.7.
    probs = t([[0.7, 0.3]] * 10)
    labels = y([0] * 7 + [1] * 3)
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.0, abs=1e-12)
    # One-hot and always right: conf 1 = acc 1.
    onehot = torch.eye(3, dtype=torch.float64)
    assert expected_calibration_error(onehot, y([0, 1, 2])) == 0.0


def test_ece_overconfident_wrong_is_one():
    # conf 1.0 and always wrong: one bin with acc 0, conf 1 -> ECE 1.
    assert expected_calibration_error(torch.eye(2, dtype=torch.float64), y([1, 0])) == pytest.approx(1.0)


@pytest.mark.parametrize("n_bins", [1, 5, 10, 15])
def test_ece_and_bins_match_numpy_loop(n_bins):
    probs, labels = random_probs()
    # Mix in rows whose confidence sits exactly on bin edges of 5 and 10 bins.
    edge = t([[0.6, 0.4], [0.5, 0.5], [0.8, 0.2], [0.3, 0.7], [1.0, 0.0]])
    probs = torch.cat([probs, torch.cat([edge, torch.zeros(5, 2, dtype=torch.float64)], dim=1)])
    labels = torch.cat([labels, y([0, 1, 1, 1, 0])])
    p, lab = probs.numpy(), labels.numpy()

    assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(
        ref_ece(p, lab, n_bins), abs=1e-12
    )
    bins = reliability_bins(probs, labels, n_bins)
    ref = ref_bins(p, lab, n_bins)
    np.testing.assert_array_equal(bins["count"], [r[0] for r in ref])
    np.testing.assert_allclose(bins["confidence"], [r[1] for r in ref], rtol=1e-12)
    np.testing.assert_allclose(bins["accuracy"], [r[2] for r in ref], rtol=1e-12)
    np.testing.assert_allclose(bins["bin_lower"], np.arange(n_bins) / n_bins)
    np.testing.assert_allclose(bins["bin_upper"], np.arange(1, n_bins + 1) / n_bins)
    assert bins["count"].dtype == np.int64 and bins["count"].sum() == len(labels)


def test_ece_agrees_with_torchmetrics_off_the_edges():
    # Away from bin edges the two binning conventions coincide; torchmetrics works in float32.
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs, labels = random_probs(seed=1)
    expected = multiclass_calibration_error(probs, labels, num_classes=4, n_bins=15).item()
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-6)


# ---- NLL and Brier ----


def test_nll_and_brier_hand():
    probs = t([[0.5, 0.25, 0.25], [0.1, 0.9, 0.0]])
    labels = y([0, 1])
    # NLL = (-ln 0.5 - ln 0.9) / 2 = (0.693147 + 0.105361) / 2 = 0.399254
    assert negative_log_likelihood(probs.log(), labels) == pytest.approx(0.3992538, abs=1e-6)
    # Brier row 1: (0.5-1)^2 + 0.25^2 + 0.25^2 = 0.25 + 0.0625 + 0.0625 = 0.375
    #       row 2: 0.1^2 + (0.9-1)^2 + 0^2 = 0.01 + 0.01 = 0.02;  mean = 0.1975
    assert brier_score(probs, labels) == pytest.approx(0.1975, abs=1e-12)


def test_one_hot_correct_gives_zero_nll_and_brier():
    onehot = torch.eye(4, dtype=torch.float64)
    labels = y([0, 1, 2, 3])
    assert negative_log_likelihood(onehot.log(), labels) == 0.0  # log 1 = 0; log 0 = -inf is never picked
    assert brier_score(onehot, labels) == 0.0


@pytest.mark.parametrize("c", [2, 4, 5])
def test_uniform_gives_log_c_and_one_minus_one_over_c(c):
    probs = torch.full((6, c), 1.0 / c, dtype=torch.float64)
    labels = torch.arange(6) % c
    assert negative_log_likelihood(probs.log(), labels) == pytest.approx(math.log(c), abs=1e-12)
    # (1 - 1/c)^2 + (c - 1) / c^2 = (c - 1) / c
    assert brier_score(probs, labels) == pytest.approx(1 - 1 / c, abs=1e-12)


def test_nll_and_brier_match_numpy_loop():
    probs, labels = random_probs(seed=2)
    p, lab = probs.numpy(), labels.numpy()
    assert negative_log_likelihood(probs.log(), labels) == pytest.approx(ref_nll(p, lab), rel=1e-12)
    assert brier_score(probs, labels) == pytest.approx(ref_brier(p, lab), rel=1e-12)


# ---- compute_metrics and validation ----


def test_compute_metrics_matches_parts():
    probs, labels = random_probs(seed=3)
    log_probs = probs.log()
    m = compute_metrics(log_probs, labels, n_bins=10)
    assert set(m) == {"acc", "ece", "nll", "brier", "aurc", "acc_cov50", "acc_cov80", "acc_cov90"}
    assert all(isinstance(v, float) for v in m.values())
    p, lab = probs.numpy(), labels.numpy()
    assert m["acc"] == pytest.approx(np.mean(p.argmax(1) == lab), abs=1e-12)
    assert m["ece"] == pytest.approx(ref_ece(p, lab, 10), abs=1e-12)
    assert m["nll"] == pytest.approx(ref_nll(p, lab), rel=1e-12)
    assert m["brier"] == pytest.approx(ref_brier(p, lab), rel=1e-12)


def test_compute_metrics_accepts_float32():
    probs, labels = random_probs(seed=4)
    m32 = compute_metrics(probs.log().float(), labels)
    m64 = compute_metrics(probs.log(), labels)
    for key in m64:
        assert m32[key] == pytest.approx(m64[key], abs=1e-5)


@pytest.mark.parametrize(
    ("log_probs", "labels", "match"),
    [
        (torch.log(torch.full((3, 2), 0.5)), y([0, 1, 2]), "labels must lie in"),
        (torch.log(torch.full((3, 2), 0.5)), y([0, -1, 1]), "labels must lie in"),
        (torch.log(torch.full((3, 2), 0.5)), y([0, 1]), "N=3"),
        (torch.empty(0, 2), y([]), "empty"),
        (torch.log(torch.full((3,), 0.5)), y([0, 1, 0]), r"shape \[N, C\]"),
        (torch.log(torch.full((3, 2), 0.5)), y([[0], [1], [0]]), r"shape \[N\]"),
        (torch.log(torch.full((3, 2), 0.5)), torch.tensor([0.0, 1.0, 0.0]), "integer"),
        (torch.randn(3, 2) + 5.0, y([0, 1, 0]), "summing to 1"),
        (torch.tensor([[float("nan"), 0.0]]), y([0]), "NaN"),
    ],
)
def test_compute_metrics_rejects_bad_input(log_probs, labels, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(log_probs, labels)


def test_bad_n_bins():
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(t([[0.5, 0.5]]), y([0]), n_bins=0)


def test_mutual_information_matches_hand_computation():
    # Two samples on one example: p1 = (1, 0), p2 = (0, 1); mean (1/2, 1/2).
    # H(mean) = log 2, each H(p_k) = 0, so MI = log 2.
    # Second example: identical samples (0.3, 0.7): MI = 0. Mean over the two: log(2) / 2.
    p = np.array([[[1.0, 0.0], [0.3, 0.7]], [[0.0, 1.0], [0.3, 0.7]]])
    with np.errstate(divide="ignore"):
        lp = torch.tensor(np.log(p))
    assert mutual_information(lp) == pytest.approx(np.log(2) / 2, abs=1e-12)


def test_mutual_information_against_numpy_loop():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7, 4))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = []
    for n in range(7):
        mean = p[:, n].mean(0)
        h_mean = -(mean * np.log(mean)).sum()
        h_each = np.mean([-(p[k, n] * np.log(p[k, n])).sum() for k in range(5)])
        expected.append(h_mean - h_each)
    assert mutual_information(torch.tensor(np.log(p))) == pytest.approx(np.mean(expected), abs=1e-12)
    assert mutual_information(torch.tensor(np.log(p[:1]))) == 0.0
    with pytest.raises(ValueError, match="S, N, C"):
        mutual_information(torch.zeros(3, 4))


# ---- selective prediction and OOD detection (hand-computed small cases) ---------------------------------
from scalabl.metrics import (  # noqa: E402
    aurc,
    auroc,
    ood_auroc,
    predictive_entropy,
    risk_coverage,
    selective_accuracy,
)

# confidences .9 (right), .8 (wrong), .7 (right), .6 (wrong)
SEL_PROBS = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]], dtype=torch.float64)
SEL_LABELS = torch.tensor([0, 0, 0, 0])


def test_risk_coverage_and_aurc_by_hand():
    coverage, risk = risk_coverage(SEL_PROBS, SEL_LABELS)
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    # errors among the k most confident: 0/1, 1/2, 1/3, 2/4
    assert np.allclose(risk, [0.0, 0.5, 1 / 3, 0.5])
    assert aurc(SEL_PROBS, SEL_LABELS) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)


def test_selective_accuracy_by_hand():
    assert selective_accuracy(SEL_PROBS, SEL_LABELS, 0.25) == 1.0
    assert selective_accuracy(SEL_PROBS, SEL_LABELS, 0.5) == 0.5
    assert selective_accuracy(SEL_PROBS, SEL_LABELS, 0.8) == 0.5  # ceil(3.2) = 4 answers: 2 right
    assert selective_accuracy(SEL_PROBS, SEL_LABELS, 0.75) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="coverage"):
        selective_accuracy(SEL_PROBS, SEL_LABELS, 0.0)


def test_auroc_against_pairwise_enumeration():
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 5, size=17).astype(float)  # many ties
    neg = rng.integers(0, 5, size=11).astype(float)
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p in pos for n in neg]
    assert auroc(pos, neg) == pytest.approx(sum(pairs) / len(pairs))
    assert auroc([3.0, 4.0], [1.0, 2.0]) == 1.0 and auroc([1.0], [1.0]) == 0.5
    with pytest.raises(ValueError, match="at least one"):
        auroc([], [1.0])


def test_ood_auroc_by_max_prob_and_entropy():
    confident = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1]], dtype=torch.float64)
    unsure = torch.tensor([[0.4, 0.3, 0.3], [0.34, 0.33, 0.33]], dtype=torch.float64)
    assert ood_auroc(confident, unsure, "max_prob") == 1.0
    assert ood_auroc(confident, unsure, "entropy") == 1.0
    assert ood_auroc(unsure, confident, "entropy") == 0.0
    h = predictive_entropy(torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64))
    assert h.item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="score"):
        ood_auroc(confident, unsure, "margin")


def test_compute_metrics_reports_selective_figures():
    m = compute_metrics(SEL_PROBS.log(), SEL_LABELS)
    assert m["aurc"] == pytest.approx(aurc(SEL_PROBS, SEL_LABELS))
    assert m["acc_cov50"] == 0.5 and m["acc_cov80"] == 0.5 and m["acc_cov90"] == 0.5


def test_ece_floor_hand_cases():
    # One example with p = (0.7, 0.3): the label is 0 w.p. 0.7 (ECE |1 - 0.7| = 0.3) and 1 w.p. 0.3
    # (ECE |0 - 0.7| = 0.7), so the expected ECE is 0.7 * 0.3 + 0.3 * 0.7 = 0.42.
    assert ece_floor(t([[0.7, 0.3]]), n_draws=20000) == pytest.approx(0.42, abs=0.01)
    # One-hot predictions are always right: no floor.
    assert ece_floor(t([[1.0, 0.0], [0.0, 1.0]]), n_draws=50) == 0.0
    # The floor shrinks with the number of examples (about 1 / sqrt(N) per occupied bin).
    probs = t([[0.6, 0.4]])
    small, large = ece_floor(probs.repeat(25, 1)), ece_floor(probs.repeat(2500, 1))
    assert large < small / 5
    # Hand value for N identical rows in one bin: E|mean(Bernoulli(0.6)) - 0.6| over N = 25 draws.
    from math import comb

    exact = sum(comb(25, k) * 0.6**k * 0.4 ** (25 - k) * abs(k / 25 - 0.6) for k in range(26))
    assert ece_floor(probs.repeat(25, 1), n_draws=4000) == pytest.approx(exact, abs=0.005)
