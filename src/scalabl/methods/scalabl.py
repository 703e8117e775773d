"""ScalaBL: stochastic variational inference in the r-dim subspace of each LoRA layer.

Samplawski et al., "Scalable Bayesian Low-Rank Adaptation of Large Language Models via Stochastic
Variational Subspace Inference", UAI 2025 (arXiv 2506.21408). DESIGN §1 is the specification.

A LoRA layer adds ``(alpha / r) B A x``. ScalaBL writes ``A = diag(s) P`` and puts a Gaussian
posterior ``q(s) = N(mu, diag(sigma^2))`` on the r numbers ``s`` only; ``B`` and ``P`` are point
estimates. The forward with a sample ``s = mu + sigma * xi`` is ``B (s * (P x))``: the noise costs
r multiplies per token, and the method adds ``2 r`` parameters per adapted module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn

from scalabl.bayesian import BayesianModule, replace_lora_a
from scalabl.choices import KLDirection, NoiseMode
from scalabl.distributed import full
from scalabl.methods.base import Method


def gaussian_kl(
    mu: torch.Tensor, sigma: torch.Tensor, prior_std: float, direction: str = "correct"
) -> torch.Tensor:
    """KL between the diagonal Gaussian q = N(mu, sigma^2) and the prior p = N(0, prior_std^2).

    ``direction="correct"`` gives KL(q || p), the ELBO's term:
    ``sum_i log(prior_std / sigma_i) + (sigma_i^2 + mu_i^2) / (2 prior_std^2) - 1/2``.
    ``direction="reference"`` gives KL(p || q), which the paper's code computes (arguments
    swapped): ``sum_i log(sigma_i / prior_std) + (prior_std^2 + mu_i^2) / (2 sigma_i^2) - 1/2``.
    Computed in float32 whatever the parameters' dtype.
    """
    mu = mu.float()
    sigma = sigma.float()
    var_p = prior_std**2
    direction = KLDirection.parse(direction, "kl_direction")
    if direction == KLDirection.CORRECT:
        kl = torch.log(prior_std / sigma) + (sigma**2 + mu**2) / (2 * var_p) - 0.5
    else:
        kl = torch.log(sigma / prior_std) + (var_p + mu**2) / (2 * sigma**2) - 0.5
    return kl.sum()


class SubspaceA(BayesianModule):
    """Replaces LoRA's ``A`` linear: ``x -> s * (P x)`` with ``s ~ q(s) = N(mu, sigma^2)``.

    ``weight`` is the posterior-mean ``A = diag(mu) P`` so that peft's merge and dtype checks work.
    """

    def __init__(
        self,
        projection: torch.Tensor,
        log_mu: torch.Tensor,
        log_sigma: torch.Tensor,
        *,
        prior_std: float = 1.0,
        kl_direction: str = "correct",
        noise: str = "sequence",
    ) -> None:
        super().__init__()
        self.P = nn.Parameter(projection)
        self.log_mu = nn.Parameter(log_mu)
        self.log_sigma = nn.Parameter(log_sigma)
        self.prior_std = prior_std
        self.kl_direction = KLDirection.parse(kl_direction, "kl_direction")
        self.noise_mode = NoiseMode.parse(noise, "noise")
        self.sampling = True
        self._xi: torch.Tensor | None = None

    @classmethod
    def from_lora_weight(cls, weight: torch.Tensor, sigma_init: float, **kwargs) -> SubspaceA:
        """Initialise from a standard LoRA-A init: thin SVD ``U S Vh``, ``P = Vh``, ``mu = S``.

        ``B`` starts at zero, so dropping the rotation ``U`` leaves the adapted model unchanged.
        """
        w = weight.detach().float()
        _, s, vh = torch.linalg.svd(w, full_matrices=False)
        sigma0 = torch.empty_like(s).uniform_(sigma_init / math.sqrt(2.0), sigma_init)
        return cls(vh.to(weight.dtype).contiguous(), torch.log(s), torch.log(sigma0), **kwargs)

    @property
    def rank(self) -> int:
        return self.log_mu.shape[0]

    @property
    def in_features(self) -> int:
        return self.P.shape[1]

    @property
    def mu(self) -> torch.Tensor:
        return self.log_mu.exp()

    @property
    def sigma(self) -> torch.Tensor:
        return self.log_sigma.exp()

    @property
    def weight(self) -> torch.Tensor:
        """Posterior-mean ``A = diag(mu) P`` (what a merge or an export uses)."""
        return self.mu.to(self.P.dtype)[:, None] * self.P

    def kl(self) -> torch.Tensor:
        return gaussian_kl(self.mu, self.sigma, self.prior_std, self.kl_direction)

    def draw_noise(self, n_rows: int, generator: torch.Generator | None = None) -> None:
        rows = 1 if self.noise_mode == NoiseMode.SHARED else n_rows
        # Draw where the generator lives (a CPU generator drives a GPU model reproducibly).
        device = generator.device if generator is not None else self.log_mu.device
        xi = torch.randn(rows, self.rank, generator=generator, device=device, dtype=torch.float32)
        self._xi = xi.to(self.log_mu.device)

    def select_noise(self, index: torch.Tensor) -> None:
        if self._xi is not None and self._xi.shape[0] > 1:
            self._xi = self._xi[index.to(self._xi.device)]

    def clear_noise(self) -> None:
        self._xi = None

    @property
    def stackable(self) -> bool:
        return self.noise_mode == NoiseMode.SEQUENCE

    def noise_rows(self) -> torch.Tensor:
        return self._xi

    def set_noise_rows(self, rows: torch.Tensor) -> None:
        self._xi = rows

    def extra_parameters(self) -> int:
        return self.log_mu.numel() + self.log_sigma.numel()

    def variational_parameters(self) -> list[nn.Parameter]:
        return [self.log_mu, self.log_sigma]

    def stats(self) -> dict[str, float]:
        mu, sigma = full(self.mu.detach()).float(), full(self.sigma.detach()).float()
        return {
            "mu": mu.mean().item(),
            "sigma": sigma.mean().item(),
            "sigma_over_mu": (sigma / mu).mean().item(),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.P)
        if not self.sampling:
            return h * self.mu.to(h.dtype)
        xi = self._xi
        if xi is None:  # no explicit draw: a fresh one per sequence (or one shared)
            self.draw_noise(x.shape[0] if x.dim() > 1 else 1)
            xi, self._xi = self._xi, None
        if xi.shape[0] not in (1, x.shape[0]):
            raise RuntimeError(
                f"noise has {xi.shape[0]} rows but the batch has {x.shape[0]}: draw_noise with the batch size"
            )
        s = self.mu + self.sigma * xi  # [rows, r], float32
        s = s.view(s.shape[0], *([1] * (x.dim() - 2)), self.rank) if x.dim() > 2 else s
        return h * s.to(h.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, rank={self.rank}, prior_std={self.prior_std}, "
            f"kl_direction='{self.kl_direction}', noise='{self.noise_mode}'"
        )


class ScalaBL(Method):
    name = "scalabl"
    description = "ScalaBL: Gaussian posterior over the r-dim LoRA subspace (2r extra parameters per module)"
    reference = "Samplawski et al., UAI 2025, arXiv:2506.21408"
    # Set by the calibration study (docs/calibration-study.md): a posterior that starts at
    # sigma/mu ~ 1 keeps a real spread through training (sigma 0.05 ends at sigma/mu ~ 0.15, "LoRA
    # with jitter"), and its learning rate lets sigma move within a short run.
    default_sigma_init = 0.5
    default_variational_lr = 2e-2
    bayesian = True

    def specialise(self, model: PeftModel) -> None:
        c = self.config
        replace_lora_a(
            model,
            lambda lora_a: SubspaceA.from_lora_weight(
                lora_a.weight,
                self.sigma_init,
                prior_std=self.prior_std,
                kl_direction=c.kl_direction,
                noise=c.noise,
            ),
        )


__all__ = ["ScalaBL", "SubspaceA", "gaussian_kl"]
