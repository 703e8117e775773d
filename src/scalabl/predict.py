"""Prediction: the Bayesian model average over S posterior samples, in float64 log space.

``log p(y | x) = logsumexp_k log_softmax(z_k)_y - log S`` over samples ``k = 1..S``. ``S = 0`` is the
posterior mean: no noise, one deterministic pass at plain-LoRA cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from scalabl.data import Example
from scalabl.scoring import Scorer


def bayesian_model_average(sample_log_probs: torch.Tensor) -> torch.Tensor:
    """Average S predictive distributions given as log-probs ``[S, N, C]``; returns ``[N, C]`` float64."""
    lp = sample_log_probs.double()
    return torch.logsumexp(lp, dim=0) - math.log(lp.shape[0])


@torch.no_grad()
def predict_log_proba(
    model: nn.Module,
    scorer: Scorer,
    examples: Sequence[Example],
    *,
    n_samples: int = 10,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
    return_samples: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Predictive log-probabilities ``[N, C_max]`` (float64; ``-inf`` for absent choices).

    With ``return_samples=True`` also returns the per-sample log-probs ``[max(S, 1), N, C_max]``.
    """
    if n_samples < 0:
        raise ValueError(f"n_samples: must be >= 0 (0 = posterior mean), got {n_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    c_max = max(len(e.choices) for e in examples)
    chunks: list[torch.Tensor] = []
    batches = range(0, len(examples), batch_size)
    for start in tqdm(batches, desc=f"predict S={n_samples}", disable=not progress, dynamic_ncols=True):
        batch = examples[start : start + batch_size]
        if n_samples == 0:
            passes = [scorer.class_logits(model, batch, sample=False)]
        else:
            passes = [
                scorer.class_logits(model, batch, sample=True, generator=generator) for _ in range(n_samples)
            ]
        lp = torch.stack([torch.log_softmax(z.double(), dim=-1) for z in passes])  # [S, B, C]
        pad = torch.full((lp.shape[0], lp.shape[1], c_max - lp.shape[2]), float("-inf"), dtype=lp.dtype)
        chunks.append(torch.cat([lp.cpu(), pad], dim=-1))
    model.train(was_training)
    samples = torch.cat(chunks, dim=1)
    averaged = bayesian_model_average(samples)
    return (averaged, samples) if return_samples else averaged
