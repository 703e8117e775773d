"""IVON-LoRA: LoRA trained by the IVON optimiser, variational learning at the cost of AdamW (Cong et
al. 2024, arXiv:2411.04421 and 2506.14280; IVON: Shen et al., ICML 2024, arXiv:2402.17641).

IVON learns a diagonal Gaussian ``q = N(m, diag(1 / (ess (h + delta))))`` over every LoRA weight
(A and B): ``m`` are the weights themselves, ``h`` the Hessian estimate it keeps in its state, ``ess``
the effective sample size (a tempering of the likelihood) and ``delta`` the prior precision (the
weight decay). Everything Bayesian is ``ivon-opt``'s :class:`ivon.IVON`: each training step takes
its gradient at a weight sample held by ``sampled_params(train=True)`` (``ivon_train_samples`` of
them, averaged), and the step updates ``m``, ``h`` and the momentum. Prediction averages S networks
drawn by the same ``sampled_params`` (each seeded by ``(seed, k)``, so sample k is one network for
every batch); ``n_samples = 0`` is the mean ``m``.

Defaults are the IVON-LoRA paper's code (``team-approx-bayes/ivon-lora``, its WinoGrande-S and
BoolQ settings): learning rate 0.03 with a linear schedule, ``ess = 1e7``, ``h_0 = 3e-4``,
``beta2 = 0.99999``, clip radius 1e-3, no weight decay, one training sample, ``rescale_lr`` off.
Note the scale: IVON's step on a coordinate is at most ``lr x clip_radius`` (3e-5), made for the
paper's 10,000 steps; short runs need a larger ``ivon_lr``. The optimiser state (Hessian, momentum,
step count) is checkpointed, so an interrupted run resumes bit for bit; the saved adapter holds the
Hessian and the prior precision besides the mean, and ``scalabl export`` writes the mean.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from peft import PeftModel
from torch import nn

from scalabl import distributed
from scalabl.config import PredictConfig, TrainConfig
from scalabl.examples import Example
from scalabl.methods.base import Method, sample_seed, whole_network_samples
from scalabl.optimisation import TrainingHooks
from scalabl.scoring import Scorer

PREFIX = "ivon."


class IVONLoRA(Method):
    name = "ivon"
    description = (
        "LoRA trained by the IVON optimiser (ivon-opt): a Gaussian over A and B, S networks averaged"
    )
    reference = "Cong et al. 2024, arXiv:2411.04421; Shen et al., ICML 2024, arXiv:2402.17641 (IVON)"
    bayesian = True

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.optimizer: torch.optim.Optimizer | None = None
        self.weight_decay = 0.0  # the prior precision delta the posterior was trained with

    # ---- train -------------------------------------------------------------------------------------
    def training_hooks(self, model: nn.Module, config: TrainConfig) -> TrainingHooks:
        if distributed.world() > 1:
            raise ValueError("ivon: one process only (its weight samples are drawn per process)")

        def make(groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
            # IVON's own learning rate and prior precision, not AdamW's per-group settings
            self.optimizer = self._ivon([p for g in groups for p in g["params"]], config.weight_decay)
            return self.optimizer

        return TrainingHooks(make_optimizer=make, weight_samples=self.config.ivon_train_samples)

    def _ivon(self, params: list[nn.Parameter], weight_decay: float) -> torch.optim.Optimizer:
        from scalabl.methods.ivon_optimizer import ResumableIVON  # the optional extra

        c = self.config
        self.weight_decay = weight_decay
        return ResumableIVON(
            params,
            lr=c.ivon_lr,
            ess=c.ivon_ess,
            hess_init=c.ivon_hess_init,
            beta2=c.ivon_beta2,
            weight_decay=weight_decay,
            mc_samples=c.ivon_train_samples,
            clip_radius=c.ivon_clip_radius,
            rescale_lr=False,  # as the IVON-LoRA code
        )

    def posterior(self, model: nn.Module) -> torch.optim.Optimizer:
        """The IVON optimiser whose state is the posterior (before training: its initial Hessian)."""
        if self.optimizer is None:
            self.optimizer = self._ivon([p for p in model.parameters() if p.requires_grad], self.weight_decay)
        return self.optimizer

    def posterior_std(self, model: nn.Module) -> torch.Tensor:
        """The posterior std of every trained weight, flat in parameter order: ``1 / sqrt(ess (h + delta))``."""
        group = self.posterior(model).param_groups[0]
        return (self.config.ivon_ess * (group["hess"] + self.weight_decay)).rsqrt()

    # ---- predict -----------------------------------------------------------------------------------
    def predict_samples(
        self, model: nn.Module, scorer: Scorer, examples: Sequence[Example], config: PredictConfig
    ) -> torch.Tensor:
        """One deterministic pass per weight sample: ``[S, N, C]`` (S = 0: the mean)."""
        return whole_network_samples(self, model, scorer, examples, config)

    @contextmanager
    def posterior_sample(
        self, model: nn.Module, k: int, questions: Sequence[object], seed: int, generator: torch.Generator
    ) -> Iterator[None]:
        """Weight sample ``k``, drawn by IVON's ``sampled_params`` from the global RNG seeded by
        ``(seed, k)`` (forked: the caller's RNG is left as it was); the mean is back on exit."""
        optimizer = self.posterior(model)
        device = next(iter(optimizer.param_groups[0]["params"])).device
        # only the device the weights are on has its RNG forked (and no CUDA call on a CPU model)
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(sample_seed(seed, k))
            with optimizer.sampled_params(train=False):
                yield

    # ---- persist -----------------------------------------------------------------------------------
    def adapter_state(self, model: PeftModel) -> dict[str, torch.Tensor]:
        state = super().adapter_state(model)
        optimizer = self.posterior(model)
        state[PREFIX + "hess"] = optimizer.param_groups[0]["hess"].detach().cpu().clone()
        state[PREFIX + "weight_decay"] = torch.tensor(self.weight_decay, dtype=torch.float64)
        return state

    def load_adapter_state(self, model: PeftModel, state: dict[str, torch.Tensor], source: str) -> None:
        ours = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
        super().load_adapter_state(
            model, {k: v for k, v in state.items() if not k.startswith(PREFIX)}, source
        )
        if set(ours) != {"hess", "weight_decay"}:
            raise ValueError(f"{source}: the IVON posterior needs {PREFIX}hess and {PREFIX}weight_decay")
        self.optimizer = None
        self.weight_decay = float(ours["weight_decay"])
        group = self.posterior(model).param_groups[0]
        if ours["hess"].shape != group["hess"].shape:
            raise ValueError(
                f"{source}: {PREFIX}hess has {ours['hess'].numel()} entries, this adapter {group['hess'].numel()}"
            )
        group["hess"] = ours["hess"].to(group["hess"])

    def extra_parameters(self, model: nn.Module) -> int:
        """The posterior's variances: one Hessian entry per LoRA weight."""
        return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
