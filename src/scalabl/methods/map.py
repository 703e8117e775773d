"""MAP: LoRA with a Gaussian prior on its weights, i.e. L2 weight decay (the MAP baseline of
Yang et al., ICLR 2024 and Wang et al., NeurIPS 2024).

The training loss per example is ``NLL + ||theta||^2 / (2 prior_std^2 N_train)`` over the LoRA
parameters ``theta`` (A and B): the negative log of the prior ``N(0, prior_std^2)`` shared out over
the N training examples, so the optimum is the posterior mode. Written as an explicit loss term
rather than AdamW's decoupled decay so that it *is* a prior (AdamW's decay is not, under Adam's
rescaling). Default prior_std 0.2, BLoB's prior on A. Predictions are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from scalabl.methods.base import Method


class MAP(Method):
    name = "map"
    description = "LoRA with a Gaussian prior N(0, prior_std^2) on A and B (L2 weight decay); deterministic"
    reference = "Yang et al., ICLR 2024, arXiv:2308.13111 (MAP baseline)"
    default_prior_std = 0.2

    def penalty(self, model: nn.Module) -> Callable[[], torch.Tensor]:
        params = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
        scale = 1.0 / (2.0 * self.prior_std**2)

        def negative_log_prior() -> torch.Tensor:
            return scale * sum(p.float().pow(2).sum() for p in params)

        return negative_log_prior
