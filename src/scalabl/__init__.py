"""scalabl: Bayesian low-rank adapters (ScalaBL and baselines) for calibrated LLM fine-tuning.

The public API is imported lazily so that ``scalabl --help`` does not pay for torch/transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BayesianLoRA": "scalabl.api",
    "MethodConfig": "scalabl.config",
    "TrainConfig": "scalabl.config",
    "RunConfig": "scalabl.config",
    "PredictConfig": "scalabl.config",
    "Example": "scalabl.examples",
    "load_examples": "scalabl.data",
    "load_splits": "scalabl.data",
    "load_model": "scalabl.models",
    "compute_metrics": "scalabl.metrics",
    "from_pretrained": "scalabl.hub",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scalabl' has no attribute {name!r}")
