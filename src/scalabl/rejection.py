"""How well an uncertainty score tells wrong answers from right ones: AUROC, the prediction-rejection
ratio (PRR) and the accuracy-rejection curve.

For N answers with quality ``q_i`` in [0, 1] (1 = right) and uncertainty ``u_i`` (higher = less
sure), rejecting the k most uncertain answers leaves the mean quality ``Q(k)`` of the N - k others
(ties in u broken by input order). The area under that curve is ``A = mean_k Q(k)``, k = 0..N-1.
The oracle rejects the worst answers first (``A_oracle``); random rejection keeps the mean quality
(``A_random = mean q``). ``PRR = (A - A_random) / (A_oracle - A_random)``: 1 for a perfect score, 0
for one no better than chance, negative for one that prefers its wrong answers (Malinin et al.;
lm-polygraph's ``PredictionRejectionArea`` normalised the same way).
"""

from __future__ import annotations

import numpy as np

from scalabl.metrics import auroc


def rejection_curve(uncertainty: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fraction rejected ``k / N``, mean quality of the kept) for k = 0..N-1."""
    u, q = np.asarray(uncertainty, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    if u.shape != q.shape or u.ndim != 1 or u.size == 0:
        raise ValueError(
            f"uncertainty and quality must be equal-length non-empty vectors, got {u.shape}, {q.shape}"
        )
    kept_first = q[np.argsort(u, kind="stable")]  # most certain first
    n = q.size
    kept_mean = np.cumsum(kept_first) / np.arange(1, n + 1)  # mean of the m most certain, m = 1..n
    return np.arange(n) / n, kept_mean[::-1]  # k rejected keeps the n - k most certain


def _area(uncertainty: np.ndarray, quality: np.ndarray) -> float:
    return float(rejection_curve(uncertainty, quality)[1].mean())


def prediction_rejection_ratio(uncertainty: np.ndarray, quality: np.ndarray) -> float:
    """PRR (see the module docstring); NaN when every answer has the same quality."""
    q = np.asarray(quality, dtype=np.float64)
    random = float(q.mean())
    oracle = _area(-q, q)  # the worst answers are the most "uncertain"
    if oracle - random <= 0:
        return float("nan")
    return (_area(uncertainty, q) - random) / (oracle - random)


def wrong_vs_right_auroc(uncertainty: np.ndarray, correct: np.ndarray) -> float:
    """AUROC of the uncertainty for telling wrong answers (positive) from right ones; NaN when every
    answer is right or every answer is wrong (nothing to tell apart)."""
    u, c = np.asarray(uncertainty, dtype=np.float64), np.asarray(correct, dtype=bool)
    if c.all() or not c.any():
        return float("nan")
    return auroc(u[~c], u[c])
