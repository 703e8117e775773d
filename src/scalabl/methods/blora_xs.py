"""B-LoRA-XS: a Bayesian posterior over LoRA-XS's r x r cores (Marszałek et al. 2025, arXiv:2502.12122;
LoRA-XS: Bałazy et al. 2024, arXiv:2405.17604).

LoRA-XS freezes the adapter's two factors at the truncated SVD of the base weight ``W = U S V^T``
(``A = V_r^T``, ``B = U_r S_r``) and trains only an r x r core ``R`` between them: the layer adds
``(alpha / r) B R A x``, r^2 trained numbers per module. ``R`` starts at 0, so the adapted model
starts as the base model. The posterior is over the cores only (``xs_posterior``):

* ``swag`` (the paper): SWAG (Maddox et al., NeurIPS 2019, arXiv:1902.02476) from the training
  iterates. After ``swag_start`` of the steps the learning rate is held where the schedule had it and
  every ``swag_every`` steps each core's iterate enters the running first and second moments and a
  ring of the last K = ``swag_rank`` deviations ``R_i - mean_i``. A sample is
  ``mean + sqrt(diag var) z1 / sqrt 2 + D z2 / sqrt(2 (K - 1))`` with ``z2`` shared by every module
  (the low-rank part is one joint covariance over the adapter); with fewer than 2 iterates, the
  diagonal alone (unscaled). After training the cores are set to the SWA mean, which is what
  ``n_samples = 0`` and ``scalabl export`` give. The moments live in buffers of the adapter, so a
  checkpoint resumes them and the saved adapter holds them: ``(2 + K) r^2`` numbers per module.
* ``laplace``: laplace-torch's Laplace approximation around the trained cores (the ``laplace``
  method's machinery and options, ``laplace_hessian`` etc., on the cores alone).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn

from scalabl.bayesian import lora_layers
from scalabl.choices import XSPosterior
from scalabl.config import MethodConfig, PredictConfig, TrainConfig
from scalabl.examples import Example
from scalabl.methods.base import Method, sample_seed, whole_network_samples
from scalabl.methods.laplace import LaplaceLoRA
from scalabl.optimisation import TrainingHooks
from scalabl.scoring import Scorer


def swag_collect(
    mean: torch.Tensor, sq: torch.Tensor, dev: torch.Tensor, n: int, theta: torch.Tensor
) -> None:
    """Add iterate ``theta`` (the ``n + 1``-th) to SWAG's moments, in place: the running mean and
    second moment, and ``theta - mean`` (the updated mean) into deviation slot ``n mod K``."""
    mean.copy_((mean * n + theta) / (n + 1))
    sq.copy_((sq * n + theta.square()) / (n + 1))
    dev[n % dev.shape[0]].copy_(theta - mean)


def swag_sample(
    mean: torch.Tensor, sq: torch.Tensor, dev: torch.Tensor, n: int, z1: torch.Tensor, z2: torch.Tensor
) -> torch.Tensor:
    """SWAG's sample from the moments of ``n`` iterates: ``mean + sqrt(var) z1 / sqrt 2 + D z2 /
    sqrt(2 (k - 1))`` over the ``k = min(n, K)`` deviations held (``z2`` of length k); with k < 2 the
    diagonal alone, ``mean + sqrt(var) z1``."""
    std = (sq - mean.square()).clamp_min(0.0).sqrt()
    k = min(n, dev.shape[0])
    if k < 2:
        return mean + std * z1
    low_rank = torch.einsum("k,k...->...", z2.to(dev.dtype), dev[:k])
    return mean + std * z1 / math.sqrt(2.0) + low_rank / math.sqrt(2.0 * (k - 1))


class XSCore(nn.Module):
    """LoRA-XS's ``lora_A``: the frozen ``V_r^T`` then the trained core ``R`` (an r x r linear), with
    SWAG's moments of ``R`` as buffers. ``weight`` = ``R V_r^T``, the plain LoRA ``A`` it equals."""

    def __init__(self, basis: torch.Tensor, swag_rank: int) -> None:
        super().__init__()
        r = basis.shape[0]
        self.in_features, self.out_features = basis.shape[1], r
        self.register_buffer("basis", basis.contiguous())
        self.core = nn.Linear(r, r, bias=False, dtype=basis.dtype, device=basis.device)
        nn.init.zeros_(self.core.weight)
        zeros = torch.zeros(r, r, dtype=basis.dtype, device=basis.device)
        self.register_buffer("swag_n", torch.zeros((), dtype=torch.int64, device=basis.device))
        self.register_buffer("swag_mean", zeros.clone())
        self.register_buffer("swag_sq", zeros.clone())
        self.register_buffer("swag_dev", zeros.new_zeros(swag_rank, r, r))

    @property
    def weight(self) -> torch.Tensor:
        return self.core.weight @ self.basis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.core(F.linear(x, self.basis))

    @torch.no_grad()
    def collect(self) -> None:
        swag_collect(self.swag_mean, self.swag_sq, self.swag_dev, int(self.swag_n), self.core.weight)
        self.swag_n += 1


class CoreLaplace(LaplaceLoRA):
    """The laplace method's posterior over the XS cores alone (the frozen factors are not weights)."""

    def posterior_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in super().posterior_parameters(model) if n.endswith(".core.weight")]


class BLoRAXS(Method):
    name = "blora_xs"
    description = "B-LoRA-XS: LoRA-XS's r x r core between frozen SVD factors, SWAG (or Laplace) over it"
    reference = "Marszałek et al. 2025, arXiv:2502.12122; LoRA-XS: Bałazy et al. 2024, arXiv:2405.17604"
    bayesian = True

    def __init__(self, config: MethodConfig) -> None:
        super().__init__(config)
        self.laplace = CoreLaplace(config) if config.xs_posterior == XSPosterior.LAPLACE else None

    @staticmethod
    def cores(model: nn.Module) -> list[XSCore]:
        return [m for m in model.modules() if isinstance(m, XSCore)]

    # ---- build -------------------------------------------------------------------------------------
    def specialise(self, model: PeftModel) -> None:
        """Freeze A and B at the base weight's truncated SVD and put the core between them."""
        r = self.config.rank
        for name, layer in lora_layers(model):
            weight = layer.get_base_layer().weight
            if not weight.dtype.is_floating_point:
                raise ValueError(
                    f"blora_xs: the base weight of {name} is quantised ({weight.dtype}); LoRA-XS needs its "
                    "SVD: train without --quant"
                )
            u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
            for adapter, lora_a in list(layer.lora_A.items()):
                like = lora_a.weight
                layer.lora_A[adapter] = XSCore(vh[:r].to(like), self.config.swag_rank)
                lora_b = layer.lora_B[adapter].weight
                with torch.no_grad():
                    lora_b.copy_((u[:, :r] * s[:r]).to(lora_b))
                lora_b.requires_grad_(False)

    # ---- train -------------------------------------------------------------------------------------
    def training_hooks(self, model: nn.Module, config: TrainConfig) -> TrainingHooks:
        if self.laplace is not None:
            return TrainingHooks()
        start, every, cores = (
            math.floor(self.config.swag_start * config.steps),
            self.config.swag_every,
            self.cores(model),
        )

        def collect(step: int) -> None:
            if step > start and (step - start) % every == 0:
                for core in cores:
                    core.collect()

        # held from the collection's start, but never inside the warm-up (a rate of 0 there)
        warmup = round(config.warmup_ratio * config.steps)
        return TrainingHooks(hold_lr_from=max(start, warmup), after_step=collect)

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
        """Laplace: its fit on the cores. SWAG: the cores set to the SWA mean of the collected iterates."""
        if self.laplace is not None:
            return self.laplace.post_fit(
                model, scorer, train=train, validation=validation, seed=seed, progress=progress
            )
        cores = self.cores(model)
        n = int(cores[0].swag_n)
        if n:
            with torch.no_grad():
                for core in cores:
                    core.core.weight.copy_(core.swag_mean)
        return {"swag_iterates": n, "swag_deviations": min(n, self.config.swag_rank)}

    # ---- predict -----------------------------------------------------------------------------------
    def predict_samples(
        self, model: nn.Module, scorer: Scorer, examples: Sequence[Example], config: PredictConfig
    ) -> torch.Tensor:
        if self.laplace is not None:
            return self.laplace.predict_samples(model, scorer, examples, config)
        return whole_network_samples(self, model, scorer, examples, config)

    @contextmanager
    def posterior_sample(
        self, model: nn.Module, k: int, questions: Sequence[object], seed: int, generator: torch.Generator
    ) -> Iterator[None]:
        """SWAG sample ``k`` on every core, drawn from a generator seeded by ``(seed, k)``; the
        cores as they were on exit. (Laplace: the mean; its samples are its predictive's.)"""
        if self.laplace is not None:
            yield
            return
        cores = self.cores(model)
        draw = torch.Generator().manual_seed(sample_seed(seed, k))
        n = int(cores[0].swag_n)
        z2 = torch.randn(min(n, self.config.swag_rank), generator=draw, dtype=torch.float64)
        held = [core.core.weight.detach().clone() for core in cores]
        with torch.no_grad():
            for core in cores:
                z1 = torch.randn(core.swag_mean.shape, generator=draw).to(core.swag_mean)
                core.core.weight.copy_(swag_sample(core.swag_mean, core.swag_sq, core.swag_dev, n, z1, z2))
        try:
            yield
        finally:
            with torch.no_grad():
                for core, weight in zip(cores, held, strict=True):
                    core.core.weight.copy_(weight)

    # ---- persist -----------------------------------------------------------------------------------
    def adapter_state(self, model: PeftModel) -> dict[str, torch.Tensor]:
        return super().adapter_state(model) if self.laplace is None else self.laplace.adapter_state(model)

    def load_adapter_state(self, model: PeftModel, state: dict[str, torch.Tensor], source: str) -> None:
        if self.laplace is None:
            super().load_adapter_state(model, state, source)
        else:
            self.laplace.load_adapter_state(model, state, source)

    def extra_parameters(self, model: nn.Module) -> int:
        """SWAG: its mean, second moment and K deviations of every r x r core, ``(2 + K) r^2`` per
        module; Laplace: its curvature's numbers."""
        if self.laplace is not None:
            return self.laplace.extra_parameters(model)
        return sum((2 + self.config.swag_rank) * c.core.weight.numel() for c in self.cores(model))

    def trained_parameters(self, model: nn.Module) -> int:
        """The numbers training changes: one r x r core per module."""
        return sum(c.core.weight.numel() for c in self.cores(model))
