"""BLoB: Bayesian Low-Rank Adaptation by Backpropagation (Wang et al., NeurIPS 2024, arXiv:2406.11675).

A full diagonal Gaussian posterior over LoRA's ``A``: ``q(A) = N(M, sigma^2)`` entrywise with
``sigma = rho^2`` (``rho_0 ~ U(eps / sqrt 2, eps)``, eps = ``sigma_init``), sampled with flipout
(:mod:`scalabl.methods.flipout`); ``B`` is a point estimate. Prior ``N(0, prior_std^2)`` with
prior_std 0.2 by default. Trained with the same recipes as ScalaBL (``elbo`` or ``blob``, the
latter being BLoB's own two-optimiser recipe). It adds ``r x in`` parameters per module (the
``rho``), about as many as LoRA's ``A`` itself: the cost ScalaBL's ``2 r`` avoids.
"""

from __future__ import annotations

import math

import torch
from peft import PeftModel
from torch import nn

from scalabl.bayesian import replace_lora_a
from scalabl.choices import KLDirection
from scalabl.distributed import full
from scalabl.methods.base import Method
from scalabl.methods.flipout import FlipoutGaussianA
from scalabl.methods.scalabl import gaussian_kl


class BlobA(FlipoutGaussianA):
    """LoRA ``A`` with a learned Gaussian posterior over its entries: mean ``weight``, std ``rho^2``."""

    def __init__(
        self,
        mean: torch.Tensor,
        rho: torch.Tensor,
        *,
        prior_std: float = 0.2,
        kl_direction: str = "correct",
        noise: str = "sequence",
    ) -> None:
        super().__init__(mean, noise=noise)
        self.rho = nn.Parameter(rho)
        self.prior_std = prior_std
        self.kl_direction = KLDirection.parse(kl_direction, "kl_direction")

    @classmethod
    def from_lora_weight(cls, weight: torch.Tensor, sigma_init: float, **kwargs) -> BlobA:
        rho = torch.empty_like(weight).uniform_(sigma_init / math.sqrt(2.0), sigma_init)
        return cls(weight.detach().clone(), rho, **kwargs)

    @property
    def std(self) -> torch.Tensor:
        return self.rho.float() ** 2

    def kl(self) -> torch.Tensor:
        return gaussian_kl(self.weight, self.std, self.prior_std, self.kl_direction)

    def extra_parameters(self) -> int:
        return self.rho.numel()

    def variational_parameters(self) -> list[nn.Parameter]:
        return [self.weight, self.rho]

    def stats(self) -> dict[str, float]:
        mean, std = full(self.weight.detach()).float().abs(), full(self.std.detach())
        return {
            "mu": mean.mean().item(),
            "sigma": std.mean().item(),
            # ratio of means: entries of M near zero would make a mean of ratios meaningless
            "sigma_over_mu": (std.mean() / mean.mean().clamp_min(1e-12)).item(),
        }


class BLoB(Method):
    name = "blob"
    description = "BLoB: Gaussian posterior over every entry of LoRA's A (sigma = rho^2), flipout noise"
    reference = "Wang et al., NeurIPS 2024, arXiv:2406.11675"
    bayesian = True
    default_prior_std = 0.2

    def specialise(self, model: PeftModel) -> None:
        c = self.config
        replace_lora_a(
            model,
            lambda lora_a: BlobA.from_lora_weight(
                lora_a.weight,
                self.sigma_init,
                prior_std=self.prior_std,
                kl_direction=c.kl_direction,
                noise=c.noise,
            ),
        )
