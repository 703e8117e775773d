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
from scalabl.methods.base import bayesian_modules
from scalabl.scoring import Scorer
from scalabl.subset import select_subset


def bayesian_model_average(sample_log_probs: torch.Tensor) -> torch.Tensor:
    """Average S predictive distributions given as log-probs ``[S, N, C]``; returns ``[N, C]`` float64."""
    lp = sample_log_probs.double()
    return torch.logsumexp(lp, dim=0) - math.log(lp.shape[0])


def _shared_noise(model: nn.Module) -> bool:
    return any(getattr(m, "noise_mode", "sequence") == "shared" for m in bayesian_modules(model))


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
    batch_samples: bool = False,
    sample_modules: str = "all",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Predictive log-probabilities ``[N, C_max]`` (float64; ``-inf`` for absent choices).

    ``batch_samples=True`` runs the S samples of a batch as one forward of S x B sequences (each
    copy gets its own per-sequence noise); the default runs S forwards of B sequences. With
    ``noise="shared"`` (one draw per forward) samples always run one forward each.

    ``sample_modules`` (``"all"``, ``"lm_head"``, ``"last:K"``; see :mod:`scalabl.subset`) samples
    only some modules, the rest at their posterior mean. Then ``batch_samples=True`` runs the
    network before the first sampled module once and branches into S copies there; the plain loop
    gives the same probabilities for the same seed.

    With ``return_samples=True`` also returns the per-sample log-probs ``[max(S, 1), N, C_max]``.
    """
    if n_samples < 0:
        raise ValueError(f"n_samples: must be >= 0 (0 = posterior mean), got {n_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    subset = select_subset(model, sample_modules) if sample_modules != "all" and n_samples > 0 else None
    if subset is not None and not subset.stackable:
        raise ValueError(
            f"sample_modules={sample_modules!r} needs modules with independent per-sequence noise "
            "(scalabl with noise='sequence'); this model's sampled modules draw otherwise: use 'all'"
        )
    if subset is None and batch_samples and n_samples > 0:
        # All modules, S copies from the first decoder layer on, the noise drawn as the plain loop
        # draws it (same probabilities); correlated or shared noise keeps the copies path below.
        everything = select_subset(model, "all")
        subset = everything if everything.stackable else None  # stackable: per-sequence noise only
    generator = torch.Generator().manual_seed(seed)
    c_max = max(len(e.choices) for e in examples)
    chunks: list[torch.Tensor] = []
    batches = range(0, len(examples), batch_size)
    for start in tqdm(batches, desc=f"predict S={n_samples}", disable=not progress, dynamic_ncols=True):
        batch = examples[start : start + batch_size]
        if n_samples == 0:
            logits = scorer.class_logits(model, batch, sample=False)[None]
        elif subset is not None and batch_samples:
            # one pass up to the subset, S copies from there on
            logits = scorer.class_logits(model, batch, subset=subset, copies=n_samples, generator=generator)
            logits = logits.view(n_samples, len(batch), -1)
        elif subset is not None:
            logits = torch.stack(
                [
                    scorer.class_logits(model, batch, subset=subset, generator=generator)
                    for _ in range(n_samples)
                ]
            )
        elif batch_samples and not _shared_noise(model):
            # S copies of the batch in one forward (MC dropout): each copy draws its own sample.
            logits = scorer.class_logits(model, list(batch) * n_samples, sample=True, generator=generator)
            logits = logits.view(n_samples, len(batch), -1)
        else:
            logits = torch.stack(
                [
                    scorer.class_logits(model, batch, sample=True, generator=generator)
                    for _ in range(n_samples)
                ]
            )
        lp = torch.log_softmax(logits.double(), dim=-1)  # [S, B, C]
        pad = torch.full((lp.shape[0], lp.shape[1], c_max - lp.shape[2]), float("-inf"), dtype=lp.dtype)
        chunks.append(torch.cat([lp.cpu(), pad], dim=-1))
    model.train(was_training)
    samples = torch.cat(chunks, dim=1)
    averaged = bayesian_model_average(samples)
    return (averaged, samples) if return_samples else averaged
