"""Decisions with guarantees, fitted on held-out predictions: conformal answer sets and selective answering.

Both read predictive log-probabilities ``[N, C]`` (absent choices of a question with fewer
choices are ``-inf``) and the true labels of a calibration set the model never trained or fitted
on, and both keep their guarantee for a new question exchangeable with that set.

**Conformal answer sets** (split conformal prediction; Vovk et al. 2005, Angelopoulos & Bates,
"A gentle introduction to conformal prediction", 2021). A score ``E(x, y)`` says how strange label
``y`` is for ``x``; with the n calibration scores sorted, ``q = the k-th smallest``,
``k = ceil((n + 1)(1 - alpha))`` (``q = inf`` when ``k > n``), and the set
``C(x) = {y : E(x, y) <= q}`` covers the true answer with probability at least ``1 - alpha``
(and at most ``1 - alpha + 1 / (n + 1)`` when scores are distinct), over calibration and test
draws. Two scores:

* ``lac`` (least ambiguous set-valued classifier, Sadinle et al. 2019): ``E = 1 - p(y | x)``; the
  smallest sets on average. A set may be empty when no choice is probable enough.
* ``aps`` (adaptive prediction sets, Romano et al. 2020), not randomised: ``E`` = the probability
  mass of the choices ranked above ``y`` (ties by index) plus ``p(y | x)``; sets grow where the
  model is unsure.

**Selective answering** with a guaranteed risk (Geifman & El-Yaniv, "Selective classification for
deep neural networks", 2017). Answer when the confidence (the top probability) is at least a
threshold, else abstain. For each of ``m`` candidate thresholds (the confidences at which 1/m,
2/m, ..., all of the calibration questions are answered) the errors among the ``k`` answered are
Binomial(k, R) given k, R being the true error rate among answered questions; the threshold is
certified when ``P(Binomial(k, target) <= errors) <= delta / m`` (a one-sided Clopper-Pearson test),
and the lowest certified threshold is chosen. By the union bound, with probability at least
``1 - delta`` over the calibration draw the chosen threshold's selective risk is at most
``target``. None certified: abstain on everything (threshold ``inf``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from scalabl.choices import Choice

SCORE_TOLERANCE = 1e-9  # float64 rounding of a score, far below any probability a question moves by


class ConformalScore(Choice):
    LAC = "lac"
    APS = "aps"


def _probs_and_mask(log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    valid = torch.isfinite(log_probs)
    return torch.where(valid, log_probs.double().exp(), torch.zeros((), dtype=torch.float64)), valid


def _check(log_probs: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if log_probs.dim() != 2 or log_probs.shape[0] == 0:
        raise ValueError(f"log_probs: expected a non-empty [N, C] tensor, got shape {tuple(log_probs.shape)}")
    if labels is not None and labels.shape != (log_probs.shape[0],):
        raise ValueError(f"labels: expected shape ({log_probs.shape[0]},), got {tuple(labels.shape)}")


def conformal_scores(log_probs: torch.Tensor, score: str | ConformalScore) -> torch.Tensor:
    """``E(x, y)`` for every question and choice, ``[N, C]`` float64 (``inf`` for absent choices)."""
    _check(log_probs)
    score = ConformalScore.parse(score, "score")
    probs, valid = _probs_and_mask(log_probs)
    if score == ConformalScore.LAC:
        scores = 1.0 - probs
    else:
        # stable sort, descending: ties keep the choices' order
        order = torch.sort(-probs, dim=-1, stable=True).indices
        cumulative = torch.cumsum(probs.gather(-1, order), dim=-1)
        scores = torch.empty_like(probs).scatter_(-1, order, cumulative)
    return scores.masked_fill(~valid, math.inf)


def conformal_quantile(calibration_scores: torch.Tensor, alpha: float) -> float:
    """The k-th smallest of n scores, ``k = ceil((n + 1)(1 - alpha))``; ``inf`` when ``k > n``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: must be in (0, 1), got {alpha!r}")
    n = calibration_scores.numel()
    k = math.ceil((n + 1) * (1.0 - alpha) - 1e-12)  # guard (n + 1)(1 - alpha) landing a hair above an integer
    if k > n:
        return math.inf
    return torch.sort(calibration_scores.double()).values[k - 1].item()


@dataclass
class ConformalSets:
    """A fitted split-conformal rule: ``C(x) = {y : E(x, y) <= threshold}``."""

    score: str
    alpha: float
    threshold: float
    n_calibration: int

    def sets(self, log_probs: torch.Tensor) -> torch.Tensor:
        """The answer sets as a bool mask ``[N, C]`` (absent choices never in a set). Scores within
        ``SCORE_TOLERANCE`` of the threshold count as in: APS's cumulative sums reach 1 give or take
        rounding, and a set must not change with it (a larger set only adds coverage)."""
        return conformal_scores(log_probs, self.score) <= self.threshold + SCORE_TOLERANCE


def fit_conformal(
    log_probs: torch.Tensor, labels: torch.Tensor, alpha: float, score: str | ConformalScore = "lac"
) -> ConformalSets:
    """Split conformal on a calibration set: see the module docstring."""
    _check(log_probs, labels)
    score = ConformalScore.parse(score, "score")
    true_scores = conformal_scores(log_probs, score).gather(-1, labels.long()[:, None]).squeeze(-1)
    return ConformalSets(score.value, alpha, conformal_quantile(true_scores, alpha), len(labels))


def binomial_cdf(successes: int, trials: int, p: float) -> float:
    """``P(Binomial(trials, p) <= successes)``, summed exactly in log space."""
    if successes >= trials:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    head = math.lgamma(trials + 1)
    terms = [
        head - math.lgamma(i + 1) - math.lgamma(trials - i + 1) + i * log_p + (trials - i) * log_q
        for i in range(successes + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


@dataclass
class SelectiveRule:
    """Answer when the top probability is at least ``threshold`` (``inf``: never), else abstain."""

    target_risk: float
    delta: float
    threshold: float
    n_calibration: int
    candidates: int
    calibration_coverage: float  # the fraction of calibration questions answered
    calibration_risk: float | None  # the error rate among them (None: none answered)

    def answers(self, log_probs: torch.Tensor) -> torch.Tensor:
        """Which questions are answered, bool ``[N]``."""
        return log_probs.double().exp().nan_to_num(0.0).max(-1).values >= self.threshold


def fit_selective(
    log_probs: torch.Tensor,
    labels: torch.Tensor,
    target_risk: float,
    delta: float = 0.1,
    candidates: int = 20,
) -> SelectiveRule:
    """The lowest confidence threshold whose selective risk is certified at most ``target_risk``
    with probability at least ``1 - delta`` (see the module docstring)."""
    _check(log_probs, labels)
    for name, value in (("target_risk", target_risk), ("delta", delta)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name}: must be in (0, 1), got {value!r}")
    if candidates < 1:
        raise ValueError(f"candidates: must be >= 1, got {candidates}")
    probs, _ = _probs_and_mask(log_probs)
    confidence, prediction = probs.max(-1)
    wrong = (prediction != labels.long()).double()
    order = torch.sort(-confidence, stable=True).indices
    confidence, wrong = confidence[order], wrong[order]
    n = len(labels)
    m = min(candidates, n)
    level = delta / m
    chosen, answered, errors = math.inf, 0, 0
    for j in range(1, m + 1):
        k = math.ceil(j * n / m)
        threshold = confidence[k - 1].item()
        k = int((confidence >= threshold).sum())  # ties at the threshold are answered too
        e = int(wrong[:k].sum())
        if binomial_cdf(e, k, target_risk) <= level:
            chosen, answered, errors = threshold, k, e
    return SelectiveRule(
        target_risk=target_risk,
        delta=delta,
        threshold=chosen,
        n_calibration=n,
        candidates=m,
        calibration_coverage=answered / n,
        calibration_risk=errors / answered if answered else None,
    )


@dataclass
class Decisions:
    """The decision rules saved with a run (decisions.json)."""

    conformal: list[ConformalSets]
    selective: SelectiveRule
    calibration: dict[str, Any] = field(default_factory=dict)  # which examples, which S

    def to_dict(self) -> dict[str, Any]:
        return {
            "conformal": [asdict(c) for c in self.conformal],
            "selective": asdict(self.selective),
            "calibration": self.calibration,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decisions:
        return cls(
            conformal=[ConformalSets(**c) for c in d["conformal"]],
            selective=SelectiveRule(**d["selective"]),
            calibration=dict(d.get("calibration", {})),
        )

    def decide(self, log_probs: torch.Tensor) -> list[dict[str, Any]]:
        """Per question: each conformal set (choice indices) and whether to answer."""
        sets = {c.score: c.sets(log_probs) for c in self.conformal}
        answers = self.selective.answers(log_probs)
        return [
            {
                **{f"set_{score}": torch.nonzero(mask[i]).flatten().tolist() for score, mask in sets.items()},
                "answer": bool(answers[i]),
            }
            for i in range(log_probs.shape[0])
        ]

    def metrics(self, log_probs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """On labelled questions: each set's empirical coverage and mean size; the selective rule's
        coverage (fraction answered) and risk (error rate among answered, None if none)."""
        _check(log_probs, labels)
        out: dict[str, Any] = {}
        for c in self.conformal:
            mask = c.sets(log_probs)
            covered = mask.gather(-1, labels.long()[:, None]).squeeze(-1)
            out[c.score] = {
                "alpha": c.alpha,
                "coverage": covered.double().mean().item(),
                "mean_set_size": mask.double().sum(-1).mean().item(),
            }
        answered = self.selective.answers(log_probs)
        wrong = log_probs.argmax(-1) != labels.long()
        k = int(answered.sum())
        out["selective"] = {
            "target_risk": self.selective.target_risk,
            "delta": self.selective.delta,
            "coverage": k / len(labels),
            "risk": (wrong & answered).sum().item() / k if k else None,
        }
        return out
