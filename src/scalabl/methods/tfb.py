"""TFB: Training-Free Bayesianization of a trained LoRA (Shi et al., 2025, arXiv:2412.05723).

Train plain LoRA (MLE), then, post hoc and without any gradient step:

1. rotate each adapter by the SVD of its ``B = U S V^T``: ``B' = U S``, ``A' = V^T A`` (the
   product ``B' A' = B A`` is unchanged, so the posterior mean is the trained LoRA);
2. put a Gaussian on the entries of ``A'`` with std ``beta / S_i`` in row ``i``; the weight noise
   ``B' (noise)`` is then ``beta U E``: isotropic in the adapter's output subspace;
3. choose one ``beta`` for the whole model by search on the **validation** split: the largest
   ``beta`` whose validation NLL (S posterior samples, fixed seed) exceeds the deterministic
   LoRA's by at most ``tfb_tolerance`` nats. Doubling brackets it, bisection narrows it.

Sampling uses the flipout layer of BLoB (:mod:`scalabl.methods.flipout`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from peft import PeftModel
from torch import nn

from scalabl.bayesian import lora_layers, replace_lora_a
from scalabl.config import PredictConfig
from scalabl.examples import Example
from scalabl.methods.base import Method
from scalabl.methods.flipout import FlipoutGaussianA
from scalabl.predict import bayesian_model_average, predict_samples
from scalabl.scoring import Scorer

log = logging.getLogger(__name__)


class TFBA(FlipoutGaussianA):
    """LoRA ``A`` with a fixed (not learned) posterior: std ``beta / singular[i]`` in row ``i``.

    Before :meth:`TFB.post_fit` sets ``beta`` it is 0 and the layer is plain LoRA.
    """

    def __init__(self, mean: torch.Tensor, *, noise: str = "sequence") -> None:
        super().__init__(mean, noise=noise)
        self.register_buffer("singular", torch.ones(mean.shape[0], dtype=torch.float32))
        self.register_buffer("beta", torch.zeros((), dtype=torch.float32))

    @property
    def std(self) -> torch.Tensor:
        s = self.singular.float()
        # A zero singular value means a zero column of B': its row of A' cannot affect the output.
        inv = torch.where(s > 0, 1.0 / s.clamp_min(1e-30), torch.zeros_like(s))
        return (self.beta * inv)[:, None].expand(self.rank, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(self.beta) == 0.0:  # not Bayesianized yet (training): plain LoRA, no noise cost
            return nn.functional.linear(x, self.weight)
        return super().forward(x)

    def kl(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float32, device=self.weight.device)

    def extra_parameters(self) -> int:
        return self.singular.numel() + 1

    def variational_parameters(self) -> list[nn.Parameter]:
        return []

    def stats(self) -> dict[str, float]:
        std = self.std.detach()[:, 0]
        mean = self.weight.detach().float().abs().mean()
        return {
            "mu": mean.item(),
            "sigma": std.mean().item(),
            "sigma_over_mu": (std.mean() / mean.clamp_min(1e-12)).item(),
        }


def _tfb_modules(model: nn.Module) -> list[tuple[nn.Module, str, TFBA]]:
    return [
        (layer, name, a)
        for _, layer in lora_layers(model)
        for name, a in layer.lora_A.items()
        if isinstance(a, TFBA)
    ]


class TFB(Method):
    name = "tfb"
    description = (
        "Training-free Bayesianization: MLE LoRA, then std beta/S_i on A after an SVD of B; beta by search"
    )
    reference = "Shi et al., 2025, arXiv:2412.05723"
    bayesian = True

    def specialise(self, model: PeftModel) -> None:
        replace_lora_a(model, lambda lora_a: TFBA(lora_a.weight.detach().clone(), noise=self.config.noise))

    @torch.no_grad()
    def rotate(self, model: nn.Module) -> None:
        """``B = U S V^T`` -> ``B' = U S``, ``A' = V^T A``; stores ``S`` for the std (idempotent)."""
        for layer, name, a in _tfb_modules(model):
            b = layer.lora_B[name].weight
            u, s, vh = torch.linalg.svd(b.float(), full_matrices=False)
            layer.lora_B[name].weight.copy_((u * s).to(b.dtype))
            a.weight.copy_((vh @ a.weight.float()).to(a.weight.dtype))
            a.singular.copy_(s)

    @staticmethod
    def set_beta(model: nn.Module, beta: float) -> None:
        for _, _, a in _tfb_modules(model):
            a.beta.fill_(beta)

    def post_fit(
        self,
        model: nn.Module,
        scorer: Scorer,
        *,
        train: Sequence[Example],
        validation: Sequence[Example],
        seed: int = 0,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Rotate, then search ``beta`` on ``validation`` (see the module docstring)."""
        if len(validation) == 0:
            raise ValueError("tfb: the beta search needs a non-empty validation split")
        c = self.config
        labels = torch.tensor([e.label for e in validation])
        self.rotate(model)

        def val_nll(beta: float) -> float:
            self.set_beta(model, beta)
            config = PredictConfig(n_samples=0 if beta == 0 else c.tfb_samples, seed=seed)
            lp = bayesian_model_average(predict_samples(model, scorer, validation, config))
            return -lp.gather(1, labels[:, None]).mean().item()

        base = val_nll(0.0)
        trace: list[tuple[float, float]] = [(0.0, base)]

        def feasible(beta: float) -> bool:
            nll = val_nll(beta)
            trace.append((beta, nll))
            log.info("tfb: beta %.4g -> validation NLL %.4f (limit %.4f)", beta, nll, base + c.tfb_tolerance)
            return math.isfinite(nll) and nll <= base + c.tfb_tolerance

        # Bracket: lo feasible, hi infeasible (or the cap), growing 4x from a small beta.
        lo, hi, beta = 0.0, None, 1e-3
        while beta <= 1e3:
            if not feasible(beta):
                hi = beta
                break
            lo, beta = beta, beta * 4
        if hi is not None:
            for _ in range(c.tfb_search_steps):
                mid = math.sqrt(lo * hi) if lo > 0 else hi / 4
                lo, hi = (mid, hi) if feasible(mid) else (lo, mid)
        self.set_beta(model, lo)
        chosen = next(nll for b, nll in reversed(trace) if b == lo)
        return {
            "beta": lo,
            "validation_nll_lora": base,
            "validation_nll_at_beta": chosen,
            "tolerance": c.tfb_tolerance,
            "search": [{"beta": b, "nll": n} for b, n in trace],
        }
