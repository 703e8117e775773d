"""scalabl: Bayesian low-rank adapters for calibrated LLM fine-tuning."""

__version__ = "0.1.0"
