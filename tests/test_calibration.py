"""Temperature scaling: the LBFGS fit finds the NLL minimum (checked by grid search) and helps a miscalibrated toy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama, toy_examples

from scalabl.api import BayesianLoRA
from scalabl.calibration import apply_temperature, fit_temperature, temperature_nll
from scalabl.config import PredictConfig
from scalabl.methods import MethodConfig


def overconfident(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits 4x too sharp: true probabilities are softmax(z), predicted softmax(4 z)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g, dtype=torch.float64)
    labels = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(-1)
    return torch.log_softmax(4 * z, -1), labels


def numpy_nll(log_probs: np.ndarray, labels: np.ndarray, t: float) -> float:
    z = log_probs / t
    z = z - z.max(1, keepdims=True)
    lse = np.log(np.exp(z).sum(1))
    return float(np.mean(lse - z[np.arange(len(labels)), labels]))


def test_fitted_temperature_minimises_nll_like_a_grid_search():
    lp, y = overconfident()
    t = fit_temperature(lp, y)
    grid = np.linspace(0.5, 8, 3001)
    best = grid[np.argmin([numpy_nll(lp.numpy(), y.numpy(), g) for g in grid])]
    assert t == pytest.approx(best, abs=0.01)
    assert t == pytest.approx(4.0, rel=0.25)  # the generating sharpening
    assert temperature_nll(lp, y, t) < temperature_nll(lp, y, 1.0)
    assert temperature_nll(lp, y, t) == pytest.approx(numpy_nll(lp.numpy(), y.numpy(), t), abs=1e-9)


def test_absent_choices_stay_at_zero_probability():
    lp, y = overconfident(50)
    lp[:, 3] = float("-inf")
    lp = torch.log_softmax(lp, -1)
    y = y.clamp(max=2)
    t = fit_temperature(lp, y)
    out = apply_temperature(lp, t)
    assert torch.all(out[:, 3] == float("-inf"))
    assert torch.allclose(out.exp().sum(-1), torch.ones(50, dtype=torch.float64))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(torch.zeros(2, 2), 0.0)
    with pytest.raises(ValueError, match="at least one"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_temperature_method_and_flag_lower_validation_nll():
    train, validation = toy_examples(12), toy_examples(12, seed=5)
    labels = torch.tensor([e.label for e in validation])
    for cfg in (
        MethodConfig(method="temperature", rank=4),
        MethodConfig(method="scalabl", rank=4, temperature=True),
    ):
        blora = BayesianLoRA(make_tiny_llama(), make_byte_tokenizer(), cfg, seed=0)
        blora.fit(train, steps=6, batch_size=4, lr=5e-2, progress=False)
        before = blora.predict_log_proba(validation, n_samples=2)
        facts = blora.calibrate(validation, config=PredictConfig(n_samples=2))
        after = blora.predict_log_proba(validation, n_samples=2)
        assert facts["temperature"] == blora.temperature > 0
        nll = lambda lp: -lp.gather(1, labels[:, None]).mean().item()  # noqa: E731
        assert nll(after) <= nll(before) + 1e-9
