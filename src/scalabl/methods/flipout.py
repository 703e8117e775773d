"""A Gaussian posterior over every entry of LoRA's ``A``, sampled with flipout (shared by blob and tfb).

``q(A) = N(M, Sigma)`` elementwise, ``M`` the ``r x in`` mean (stored as ``weight`` so peft's merge
and a plain-LoRA export see the posterior mean). A sample's output is

    A~ x = M x + ((x * s_in) (Sigma * E)^T) * s_out

with ``E ~ N(0, I)`` of shape ``r x in`` drawn once per draw and random signs ``s_in`` (``in``) and
``s_out`` (``r``) per sequence (Wen et al., ICLR 2018). Each sequence's perturbation
``diag(s_out) (Sigma * E) diag(s_in)`` is an exact sample of ``N(0, Sigma)``; sequences of one draw
share ``E`` and are therefore correlated, which is why S posterior samples are S draws
(:attr:`independent_rows` is False). ``noise="shared"`` uses no signs: one sample for the batch.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from scalabl.bayesian import BayesianModule
from scalabl.choices import NoiseMode


class FlipoutGaussianA(BayesianModule):
    """Replaces LoRA's ``A`` linear with a Gaussian posterior over its entries (see module docstring).

    Subclasses define the standard deviation :attr:`std` (``r x in``, or broadcastable to it).
    """

    independent_rows = False

    def __init__(self, mean: torch.Tensor, *, noise: str = "sequence") -> None:
        super().__init__()
        self.weight = nn.Parameter(mean)
        self.noise_mode = NoiseMode.parse(noise, "noise")
        self.sampling = True
        self._eps: torch.Tensor | None = None
        self._sign_in: torch.Tensor | None = None
        self._sign_out: torch.Tensor | None = None

    @property
    @abstractmethod
    def std(self) -> torch.Tensor:
        """Posterior standard deviation of each entry of ``A`` (float32)."""

    @property
    def rank(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def draw_noise(self, n_rows: int, generator: torch.Generator | None = None) -> None:
        device = generator.device if generator is not None else self.weight.device
        eps = torch.randn(self.rank, self.in_features, generator=generator, device=device)
        self._eps = eps.to(self.weight.device)
        if self.noise_mode == NoiseMode.SHARED:
            self._sign_in = self._sign_out = None
            return
        signs = torch.randint(
            0, 2, (n_rows, self.in_features + self.rank), generator=generator, device=device
        )
        signs = (2 * signs - 1).to(self.weight.device, torch.float32)
        self._sign_in, self._sign_out = signs[:, : self.in_features], signs[:, self.in_features :]

    def select_noise(self, index: torch.Tensor) -> None:
        if self._sign_in is not None:
            index = index.to(self._sign_in.device)
            self._sign_in, self._sign_out = self._sign_in[index], self._sign_out[index]

    def clear_noise(self) -> None:
        self._eps = self._sign_in = self._sign_out = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.weight)
        if not self.sampling:
            return h
        if self._eps is None:  # no explicit draw: one of its own for this forward
            self.draw_noise(x.shape[0] if x.dim() > 1 else 1)
            try:
                return self._sampled(x, h)
            finally:
                self.clear_noise()
        return self._sampled(x, h)

    def _sampled(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        delta = (self.std * self._eps).to(x.dtype)  # [r, in]
        if self._sign_in is None:
            return h + F.linear(x, delta)
        rows = self._sign_in.shape[0]
        if rows != x.shape[0]:
            raise RuntimeError(
                f"noise has {rows} rows but the batch has {x.shape[0]}: draw_noise with the batch size"
            )
        shape = (rows, *([1] * (x.dim() - 2)), -1)
        s_in = self._sign_in.view(shape).to(x.dtype)
        s_out = self._sign_out.view(shape).to(x.dtype)
        return h + F.linear(x * s_in, delta) * s_out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, rank={self.rank}, noise='{self.noise_mode}'"
