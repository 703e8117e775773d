"""Calibration metrics for multiple-choice predictions.

All functions take ``probs`` (or ``log_probs``) of shape [N, C] over the C answer choices and integer
``labels`` of shape [N], compute in float64 on the CPU and return plain Python floats (or numpy arrays).

The ECE is written here rather than taken from ``torchmetrics.functional.classification.
multiclass_calibration_error`` because the two disagree on the binning: torchmetrics puts a confidence that
lies exactly on an edge in the bin above (bins ``[lo, hi)``, with 1.0 in an extra bin of its own) and casts
to float32, whereas the usual definition (Guo et al., 2017) and this module use bins ``(lo, hi]`` in
float64. Confidences such as 0.6 or 1/C hit edges often in multiple-choice evaluation, so the difference is
not academic (e.g. probs ``[[.6, .4], [.6, .4], [.7, .3]]``, labels ``[0, 1, 0]``, 5 bins: 1/6 here,
1/30 in torchmetrics 1.9).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "accuracy",
    "aurc",
    "auroc",
    "ood_auroc",
    "predictive_entropy",
    "risk_coverage",
    "selective_accuracy",
    "brier_score",
    "compute_metrics",
    "expected_calibration_error",
    "ece_floor",
    "mutual_information",
    "negative_log_likelihood",
    "reliability_bins",
]

# Tolerance on |sum_c p_c - 1|: loose enough for probabilities computed in float32, tight enough to
# catch raw logits or unnormalised scores passed by mistake.
_NORM_TOL = 1e-3


def _validate(
    x: torch.Tensor, labels: torch.Tensor, *, log: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes, label range and normalisation; return float64 / int64 CPU copies."""
    name = "log_probs" if log else "probs"
    if not isinstance(x, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name} and labels must be torch tensors")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape [N, C], got {tuple(x.shape)}")
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape [N], got {tuple(labels.shape)}")
    n, c = x.shape
    if n == 0 or c == 0:
        raise ValueError(f"empty input: {name} has shape {tuple(x.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"{name} has N={n} rows but labels has {labels.shape[0]} entries")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    x = x.detach().to("cpu", torch.float64)
    labels = labels.detach().to("cpu", torch.int64)
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(
            f"labels must lie in [0, {c - 1}] for C={c} classes, got range [{labels.min()}, {labels.max()}]"
        )
    probs = x.exp() if log else x
    if torch.isnan(probs).any() or (probs < 0).any():
        raise ValueError(f"{name} contains NaN or negative probabilities")
    max_dev = (probs.sum(dim=1) - 1).abs().max().item()
    if not max_dev <= _NORM_TOL:
        raise ValueError(
            f"{name} rows must be (log-)probabilities summing to 1; max |sum - 1| = {max_dev:.3g}"
        )
    return x, labels


def _confidence_and_correct(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # argmax (not max(dim=...)) because it documents returning the first maximal index on ties.
    pred = probs.argmax(dim=1)
    conf = probs.gather(1, pred[:, None])[:, 0]
    return conf, (pred == labels).to(torch.float64)


def _bin_stats(
    probs: torch.Tensor, labels: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (edges, count, sum of confidence, sum of correct) per bin ``(edges[i], edges[i+1]]``."""
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    conf, correct = _confidence_and_correct(probs, labels)
    # i / n (correctly rounded) rather than linspace, so an edge equals the float literal users write (0.6).
    edges = torch.arange(n_bins + 1, dtype=torch.float64) / n_bins
    # right=False gives edges[i-1] < conf <= edges[i], i.e. right-closed bins; 0 and 1 land in the end bins.
    idx = torch.bucketize(conf, edges[1:-1], right=False)
    count = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    correct_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    return edges, count, conf_sum, correct_sum


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of examples whose argmax class equals the label (ties go to the lowest class index).

    ``accuracy = (1/N) * sum_n [argmax_c probs[n, c] == labels[n]]``.
    """
    probs, labels = _validate(probs, labels)
    return _confidence_and_correct(probs, labels)[1].mean().item()


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width bins, as a fraction in [0, 1].

    The confidence of example n is ``max_c probs[n, c]`` and it is correct if the argmax (lowest index on
    ties) equals ``labels[n]``. Bin i (0-based) holds the confidences in ``(i/n_bins, (i+1)/n_bins]``
    (right-closed, so 0.6 with 5 bins falls in (0.4, 0.6] and 1.0 in the last bin). Then

    ``ECE = sum_i (count_i / N) * |acc_i - conf_i|``

    with ``acc_i`` and ``conf_i`` the mean correctness and mean confidence in bin i; empty bins add 0.
    """
    probs, labels = _validate(probs, labels)
    _, count, conf_sum, correct_sum = _bin_stats(probs, labels, n_bins)
    # Per-bin weight times gap: (count/N) * |correct/count - conf/count| = |correct - conf| / N.
    return ((correct_sum - conf_sum).abs().sum() / probs.shape[0]).item()


def ece_floor(
    probs: torch.Tensor, n_bins: int = 15, n_draws: int = 200, generator: torch.Generator | None = None
) -> float:
    """The ECE a perfectly calibrated predictor with these probabilities shows on this many examples.

    Labels are drawn from ``probs`` itself (so the predictor is calibrated by construction) and the
    :func:`expected_calibration_error` of each draw is averaged over ``n_draws`` draws. Binned ECE is
    biased upwards on small test sets; an ECE near this floor is as calibrated as the test set can tell.
    """
    probs, _ = _validate(probs, torch.zeros(probs.shape[0], dtype=torch.long))
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    draws = [
        expected_calibration_error(
            probs, torch.multinomial(probs.float(), 1, generator=generator)[:, 0], n_bins
        )
        for _ in range(n_draws)
    ]
    return sum(draws) / n_draws


def negative_log_likelihood(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the labels in nats: ``-(1/N) * sum_n log_probs[n, labels[n]]``."""
    log_probs, labels = _validate(log_probs, labels, log=True)
    return -log_probs.gather(1, labels[:, None]).mean().item()


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class Brier score: ``(1/N) * sum_n sum_c (probs[n, c] - onehot(labels[n])_c) ** 2``.

    Ranges over [0, 2]; uniform predictions over C classes score ``1 - 1/C``.
    """
    probs, labels = _validate(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(torch.float64)
    return (probs - onehot).pow(2).sum(dim=1).mean().item()


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin statistics for a reliability diagram, with the same bins as :func:`expected_calibration_error`.

    Returns numpy arrays of length ``n_bins``: ``bin_lower`` (i/n_bins), ``bin_upper`` ((i+1)/n_bins),
    ``confidence`` (mean top-label confidence in the bin, nan if empty), ``accuracy`` (fraction correct in
    the bin, nan if empty) and ``count`` (int64 number of examples in the bin).
    """
    probs, labels = _validate(probs, labels)
    edges, count, conf_sum, correct_sum = _bin_stats(probs, labels, n_bins)
    nonempty = count > 0
    nan = torch.full_like(count, float("nan"))
    return {
        "bin_lower": edges[:-1].numpy(),
        "bin_upper": edges[1:].numpy(),
        "confidence": torch.where(nonempty, conf_sum / count, nan).numpy(),
        "accuracy": torch.where(nonempty, correct_sum / count, nan).numpy(),
        "count": count.to(torch.int64).numpy(),
    }


def compute_metrics(log_probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    """Accuracy, ECE, NLL and Brier score of ``probs = exp(log_probs)``, keyed ``acc``, ``ece``, ``nll``, ``brier``.

    Raises ValueError if the shapes are not [N, C] and [N], N or C is 0, labels are not integers in
    [0, C), or the rows of ``exp(log_probs)`` do not sum to 1 (within 1e-3).
    """
    log_probs, labels = _validate(log_probs, labels, log=True)
    probs = log_probs.exp()
    return {
        "acc": accuracy(probs, labels),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "nll": negative_log_likelihood(log_probs, labels),
        "brier": brier_score(probs, labels),
        "aurc": aurc(probs, labels),
        **{f"acc_cov{round(100 * c)}": selective_accuracy(probs, labels, c) for c in COVERAGES},
    }


# ---- selective prediction and OOD detection -----------------------------------------------------------
COVERAGES = (0.5, 0.8, 0.9)


def _by_confidence(probs: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Correctness (0/1) sorted from the most to the least confident prediction (stable for ties)."""
    conf, correct = _confidence_and_correct(probs, labels)
    order = np.argsort(-conf.numpy(), kind="stable")
    return correct.numpy()[order].astype(np.float64)


def risk_coverage(probs: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The risk-coverage curve: keep the k most confident answers, k = 1..N; returns (coverage, risk).

    ``coverage_k = k / N``; ``risk_k`` = the error rate among those k (Geifman & El-Yaniv, 2017).
    """
    probs, labels = _validate(probs, labels, log=False)
    correct = _by_confidence(probs, labels)
    k = np.arange(1, len(correct) + 1)
    return k / len(correct), 1.0 - np.cumsum(correct) / k


def aurc(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the risk-coverage curve: the mean of ``risk_k`` over k = 1..N (lower is better)."""
    return float(risk_coverage(probs, labels)[1].mean())


def selective_accuracy(probs: torch.Tensor, labels: torch.Tensor, coverage: float) -> float:
    """Accuracy on the ``ceil(coverage N)`` most confident answers (ties kept in input order)."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage: must be in (0, 1], got {coverage}")
    probs, labels = _validate(probs, labels, log=False)
    correct = _by_confidence(probs, labels)
    k = max(1, math.ceil(coverage * len(correct) - 1e-9))
    return float(correct[:k].mean())


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """``H(p) = -sum_c p_c log p_c`` per row, in nats (absent choices with p = 0 contribute 0)."""
    p = probs.to(torch.float64)
    return -(p * torch.log(p).nan_to_num(neginf=0.0)).sum(-1)


def auroc(positive: torch.Tensor | np.ndarray, negative: torch.Tensor | np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2 (Mann-Whitney U)."""
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("auroc needs at least one positive and one negative score")
    both = np.concatenate([pos, neg])
    # midranks handle ties exactly
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(both.size, dtype=np.float64)
    sorted_vals = both[order]
    i = 0
    while i < both.size:
        j = i
        while j + 1 < both.size and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def ood_auroc(in_probs: torch.Tensor, out_probs: torch.Tensor, score: str = "max_prob") -> float:
    """AUROC of telling in-distribution (positive) from out-of-distribution inputs by their predictive.

    ``score="max_prob"``: higher max probability = more in-distribution; ``"entropy"``: lower
    predictive entropy = more in-distribution. 0.5 = no better than chance.
    """
    if score == "max_prob":
        return auroc(in_probs.max(-1).values, out_probs.max(-1).values)
    if score == "entropy":
        return auroc(-predictive_entropy(in_probs), -predictive_entropy(out_probs))
    raise ValueError(f"score: {score!r} not in ('max_prob', 'entropy')")


def mutual_information_per_example(sample_log_probs: torch.Tensor) -> torch.Tensor:
    """Each question's disagreement of the posterior samples, ``[N]`` float64 (nats).

    For per-sample log-probs ``[S, N, C]``: ``MI_n = H(mean_k p_k) - mean_k H(p_k)`` with
    ``H(p) = -sum_c p_c log p_c`` (absent choices with p = 0 contribute 0): the epistemic part of the
    predictive entropy. Zero when every sample predicts the same distribution (S = 1, the posterior mean).
    """
    if sample_log_probs.dim() != 3 or sample_log_probs.shape[0] == 0:
        raise ValueError(
            f"sample_log_probs must be [S, N, C] with S >= 1, got {tuple(sample_log_probs.shape)}"
        )
    lp = sample_log_probs.to(torch.float64)
    mean_lp = torch.logsumexp(lp, dim=0) - math.log(lp.shape[0])

    def entropy(log_p: torch.Tensor) -> torch.Tensor:
        return -(log_p.exp() * log_p.nan_to_num(neginf=0.0)).sum(-1)

    mi = entropy(mean_lp) - entropy(lp).mean(0)
    return mi.clamp(min=0.0)  # clamp: rounding can give -1e-17 for identical samples


def mutual_information(sample_log_probs: torch.Tensor) -> float:
    """Mean over questions of :func:`mutual_information_per_example`."""
    return mutual_information_per_example(sample_log_probs).mean().item()
