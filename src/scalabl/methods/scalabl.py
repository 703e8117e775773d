"""ScalaBL: stochastic variational inference in the r-dim subspace of each LoRA layer.

Samplawski et al., "Scalable Bayesian Low-Rank Adaptation of Large Language Models via Stochastic
Variational Subspace Inference", UAI 2025 (arXiv 2506.21408). DESIGN §1 is the specification.

A LoRA layer adds ``(alpha / r) B A x``. ScalaBL writes ``A = diag(s) P`` and puts a Gaussian
posterior ``q(s) = N(mu, diag(sigma^2))`` on the r numbers ``s`` only; ``B`` and ``P`` are point
estimates. The forward with a sample ``s = mu + sigma * xi`` is ``B (s * (P x))``: the noise costs
r multiplies per token, and the method adds ``2 r`` parameters per adapted module.

Three variants beyond the paper (options of the method; derivations in docs/method.md):

* ``noise_sharing``: the standard-normal ``xi`` drawn once per layer (or for the whole adapter)
  and scaled by each module's own ``sigma``, so that the modules' perturbations add up instead of
  averaging out. The KL stays the sum of the modules' marginal KLs (the shared draw makes the joint
  posterior degenerate: its exact KL to a full-rank prior is infinite), so the regulariser is the
  mean-field one of the same marginals. No extra parameters.
* ``covariance="full"``: ``q(s) = N(mu, L L^T)`` with ``L`` lower triangular, positive diagonal
  ``sigma``: ``s = mu + L xi``, r (r - 1) / 2 more numbers per module and r^2 multiplies per
  sequence; the KL in closed form (:func:`full_gaussian_kl`).
* ``prior_fit``: the prior variance set to the ELBO's optimum given q (empirical Bayes, type-II
  maximum likelihood): ``tau^2 = (tr Sigma + |mu|^2) / r`` per module, or pooled over the adapter.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn

from scalabl.bayesian import BayesianModule, layer_index, replace_lora_a
from scalabl.choices import Covariance, KLDirection, NoiseMode, NoiseSharing, PriorFit
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


def full_gaussian_kl(
    mu: torch.Tensor, scale_tril: torch.Tensor, prior_var: float | torch.Tensor, direction: str = "correct"
) -> torch.Tensor:
    """KL between q = N(mu, L L^T) over r dims (``scale_tril`` = L, lower triangular with a positive
    diagonal) and the prior p = N(0, prior_var I), in closed form, float32.

    ``direction="correct"``: KL(q || p) =
    ``1/2 [(|L|_F^2 + |mu|^2) / v - r + r log v - 2 sum_i log L_ii]``;
    ``direction="reference"``: KL(p || q) =
    ``1/2 [v |L^-1|_F^2 + |L^-1 mu|^2 - r + 2 sum_i log L_ii - r log v]``.
    """
    mu, tril = mu.float(), scale_tril.float()
    v = torch.as_tensor(prior_var, dtype=torch.float32, device=mu.device)
    r = mu.shape[0]
    log_det = 2.0 * torch.log(torch.diagonal(tril)).sum()
    if KLDirection.parse(direction, "kl_direction") == KLDirection.CORRECT:
        return 0.5 * ((tril.square().sum() + mu.square().sum()) / v - r + r * torch.log(v) - log_det)
    eye = torch.eye(r, dtype=tril.dtype, device=tril.device)
    inverse = torch.linalg.solve_triangular(tril, eye, upper=False)
    return 0.5 * (v * inverse.square().sum() + (inverse @ mu).square().sum() - r + log_det - r * torch.log(v))


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
        noise_sharing: str = "module",
        covariance: str = "diagonal",
        prior_fit: str = "fixed",
    ) -> None:
        super().__init__()
        self.P = nn.Parameter(projection)
        self.log_mu = nn.Parameter(log_mu)
        self.log_sigma = nn.Parameter(log_sigma)
        self.covariance = Covariance.parse(covariance, "covariance")
        r = log_mu.shape[0]
        # the strictly lower triangle of the Cholesky factor (full covariance): zero = the diagonal posterior
        self.tril_off = (
            nn.Parameter(torch.zeros(r * (r - 1) // 2, dtype=log_sigma.dtype, device=log_sigma.device))
            if self.covariance == Covariance.FULL
            else None
        )
        self.prior_std = prior_std
        self.kl_direction = KLDirection.parse(kl_direction, "kl_direction")
        self.noise_mode = NoiseMode.parse(noise, "noise")
        self.noise_sharing = NoiseSharing.parse(noise_sharing, "noise_sharing")
        self.prior_fit = PriorFit.parse(prior_fit, "prior_fit")
        self.prior_pooled = self.prior_fit == PriorFit.MODEL
        if self.prior_fit != PriorFit.FIXED and self.kl_direction != KLDirection.CORRECT:
            raise ValueError("prior_fit: empirical Bayes is derived for the correct KL direction KL(q || p)")
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
    def scale_tril(self) -> torch.Tensor:
        """The Cholesky factor L of the posterior covariance (``diag(sigma)`` unless full)."""
        tril = torch.diag(self.sigma)
        if self.tril_off is None:
            return tril
        rows, cols = torch.tril_indices(self.rank, self.rank, offset=-1, device=tril.device)
        return tril.index_put((rows, cols), self.tril_off)

    @property
    def marginal_std(self) -> torch.Tensor:
        """Each coordinate's posterior std: the norms of L's rows (``sigma`` unless full)."""
        return self.sigma if self.tril_off is None else self.scale_tril.norm(dim=1)

    @property
    def weight(self) -> torch.Tensor:
        """Posterior-mean ``A = diag(mu) P`` (what a merge or an export uses)."""
        return self.mu.to(self.P.dtype)[:, None] * self.P

    def second_moment(self) -> tuple[torch.Tensor, int]:
        """``E_q |s|^2 = tr Sigma + |mu|^2`` (float32) and r: what the empirical-Bayes variance reads."""
        return self.scale_tril.float().square().sum() + self.mu.float().square().sum(), self.rank

    def kl(self, prior_var: torch.Tensor | None = None) -> torch.Tensor:
        """KL to the prior: N(0, prior_std^2), or with the empirical-Bayes variance (``prior_var``:
        the pooled one of ``prior_fit="model"``, given by :func:`scalabl.bayesian.total_kl`)."""
        if prior_var is None and self.prior_fit == PriorFit.MODULE:
            moment, dims = self.second_moment()
            prior_var = moment / dims
        if self.tril_off is not None:
            v = self.prior_std**2 if prior_var is None else prior_var
            return full_gaussian_kl(self.mu, self.scale_tril, v, self.kl_direction)
        prior_std = self.prior_std if prior_var is None else prior_var.sqrt()
        return gaussian_kl(self.mu, self.sigma, prior_std, self.kl_direction)

    def noise_group(self, name: str) -> tuple | None:
        """Which modules share this one's noise draw (None: its own), from its qualified name."""
        if self.noise_sharing == NoiseSharing.MODULE:
            return None
        where = layer_index(name) if self.noise_sharing == NoiseSharing.LAYER else "adapter"
        return (where, self.rank, self.noise_mode)

    def share_noise(self, leader: BayesianModule) -> None:
        self._xi = leader._xi

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
        return sum(p.numel() for p in self.variational_parameters())

    def variational_parameters(self) -> list[nn.Parameter]:
        return [self.log_mu, self.log_sigma] + ([self.tril_off] if self.tril_off is not None else [])

    def stats(self) -> dict[str, float]:
        with torch.no_grad():
            mu, sigma = full(self.mu).float(), full(self.marginal_std).float()
            out = {
                "mu": mu.mean().item(),
                "sigma": sigma.mean().item(),
                "sigma_over_mu": (sigma / mu).mean().item(),
            }
            if self.prior_fit == PriorFit.MODULE:
                moment, dims = self.second_moment()
                out["prior_std"] = (moment / dims).sqrt().item()
        return out

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
        # [rows, r], float32: mu + L xi (L = diag(sigma) unless full)
        s = self.mu + (self.sigma * xi if self.tril_off is None else xi @ self.scale_tril.T)
        s = s.view(s.shape[0], *([1] * (x.dim() - 2)), self.rank) if x.dim() > 2 else s
        return h * s.to(h.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, rank={self.rank}, prior_std={self.prior_std}, "
            f"kl_direction='{self.kl_direction}', noise='{self.noise_mode}', "
            f"noise_sharing='{self.noise_sharing}', covariance='{self.covariance}', prior_fit='{self.prior_fit}'"
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
                noise_sharing=c.noise_sharing,
                covariance=c.covariance,
                prior_fit=c.prior_fit,
            ),
        )


__all__ = ["ScalaBL", "SubspaceA", "full_gaussian_kl", "gaussian_kl"]
