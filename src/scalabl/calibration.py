"""Temperature scaling (Guo et al., ICML 2017): one scalar T fitted post hoc on held-out data.

``p_T(y | x) = softmax(log p(y | x) / T)``. It applies on top of any method: the input is the
method's predictive log-probabilities (for a Bayesian method, its model average), so for a
deterministic method it is the classic ``softmax(z / T)``. T is fitted by LBFGS on ``log T``
(so T stays positive) to minimise the NLL of **validation** predictions, which are computed once
and cached; never fit it on the training data, whose NLL the model has already driven down.
"""

from __future__ import annotations

import torch


def apply_temperature(log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Rescale predictive log-probs ``[N, C]`` by ``1 / T`` and renormalise (``-inf`` stays ``-inf``)."""
    if temperature <= 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    return torch.log_softmax(log_probs.double() / temperature, dim=-1)


def temperature_nll(log_probs: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean NLL of the tempered predictive."""
    tempered = apply_temperature(log_probs, temperature)
    return -tempered.gather(1, labels.long()[:, None]).mean().item()


def fit_temperature(
    log_probs: torch.Tensor,
    labels: torch.Tensor,
    *,
    max_iter: int = 100,
    bounds: tuple[float, float] = (0.05, 20.0),
) -> float:
    """The temperature minimising the NLL of ``softmax(log_probs / T)`` on held-out ``labels``.

    Args:
        log_probs: validation predictive log-probs ``[N, C]`` (``-inf`` for absent choices).
        labels: true class indices ``[N]``.
        max_iter: LBFGS iterations.
        bounds: T is clamped into this range (an all-correct validation set would send T to 0).
    """
    if log_probs.ndim != 2 or labels.shape != log_probs.shape[:1]:
        raise ValueError(
            f"expected log_probs [N, C] and labels [N], got {tuple(log_probs.shape)} and {tuple(labels.shape)}"
        )
    if log_probs.shape[0] == 0:
        raise ValueError("temperature scaling needs at least one validation example")
    lp = log_probs.detach().double()
    # Absent choices: -inf / T must stay -inf without making NaN gradients through 0 * inf.
    finite = torch.isfinite(lp)
    lp_safe = torch.where(finite, lp, torch.zeros_like(lp))
    y = labels.long()[:, None]
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        scaled = (lp_safe / log_t.exp()).masked_fill(~finite, float("-inf"))
        loss = -torch.log_softmax(scaled, dim=-1).gather(1, y).mean()
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return min(max(t, bounds[0]), bounds[1])
