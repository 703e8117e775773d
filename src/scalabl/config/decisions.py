"""How a run's decision rules are fitted (``DecisionConfig``): conformal sets and selective answering."""

from __future__ import annotations

from dataclasses import dataclass

from scalabl.config.fields import JSONConfig, option
from scalabl.config.predict import check_sample_count


@dataclass
class DecisionConfig(JSONConfig):
    """The guarantees asked of the decision rules (see :mod:`scalabl.decisions`)."""

    label = "decision config"

    alpha: float = option(
        0.1, "conformal sets: miscoverage, the sets hold the true answer with probability >= 1 - alpha"
    )
    target_risk: float | None = option(
        None, "selective answering: the largest error rate among answered questions", shown="alpha"
    )
    delta: float = option(0.1, "selective answering: the risk bound holds with probability >= 1 - delta")
    calibration_samples: int | None = option(
        None, "posterior samples of the calibration predictions", shown="the run's first sample count"
    )

    def __post_init__(self) -> None:
        for name in ("alpha", "delta") + (("target_risk",) if self.target_risk is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
                raise ValueError(f"{name}: must be in (0, 1), got {value!r}")
        if self.calibration_samples is not None:
            check_sample_count(self.calibration_samples)

    @property
    def risk(self) -> float:
        """The selective rule's target risk (``target_risk``, else ``alpha``)."""
        return self.alpha if self.target_risk is None else self.target_risk
