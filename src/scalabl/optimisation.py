"""What the training loop's optimisers are: AdamW (or a method's own) with its schedule, BLoB's SGD
step on the KL, and the hooks by which a method changes the loop (:class:`TrainingHooks`).

The loop itself is :func:`scalabl.train.fit`; the recipes are described there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from scalabl import distributed
from scalabl.bayesian import total_kl, variational_parameters
from scalabl.choices import Recipe
from scalabl.config import TrainConfig


def blob_kl_weight(step: int, n_train: int, batch_size: int) -> float:
    """BLoB's pi_i for the KL step after NLL step ``step`` (0-based), computed in log space."""
    m = max(1, math.floor(100 * n_train ** (math.pi / 8) / batch_size))
    i = step % m + 1
    # log(2^(M+1) - 1) without overflow for large M
    log_denominator = (m + 1) * math.log(2) + math.log1p(-(2.0 ** -(m + 1)))
    return math.exp(i * math.log(2) - log_denominator)


# A method's own optimiser over the loop's parameter groups (IVON); None: AdamW.
MakeOptimizer = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]


@dataclass(frozen=True)
class TrainingHooks:
    """What a method changes in the loop; the defaults change nothing."""

    # the optimiser over the loop's parameter groups instead of AdamW (IVON)
    make_optimizer: MakeOptimizer | None = None
    # > 0: the optimiser samples the weights (IVON's ``sampled_params``); each step averages the
    # gradients of this many samples, all on the step's batch
    weight_samples: int = 0
    # from this step on the learning rate stays where the warm-up/decay schedule had it (SWAG
    # collects its iterates at a constant rate); None: the schedule runs to the end
    hold_lr_from: int | None = None
    # called with the number of each finished step after the update (SWAG collects the iterate)
    after_step: Callable[[int], None] | None = None


def lr_factor(step: int, warmup: int, total: int, hold_from: int | None = None) -> float:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total`` (transformers'
    ``get_linear_schedule_with_warmup``, the same floats), held constant from ``hold_from`` on."""
    if hold_from is not None:
        step = min(step, hold_from)
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


@dataclass
class Optimisation:
    """What the optimisers act on: AdamW (or the method's own, + its schedule) on everything, BLoB's
    SGD on the KL."""

    main: torch.optim.Optimizer
    scheduler: Any
    kl: torch.optim.SGD | None
    trainable: list[nn.Parameter]
    bayesian: bool  # the model has variational parameters (tfb's fixed posterior has none)
    # An optimiser whose posterior is over the weights themselves (IVON): every step's gradients are
    # taken at this many weight samples, each held by its ``sampled_params(train=True)``; 0: none.
    weight_samples: int = 0

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"main": self.main} | ({"kl": self.kl} if self.kl is not None else {})

    def weight_sample(self) -> AbstractContextManager[Any]:
        """Hold one weight sample while a gradient is taken (the optimiser reads it on release)."""
        return self.main.sampled_params(train=True) if self.weight_samples else nullcontext()


def optimisation(
    model: nn.Module,
    config: TrainConfig,
    hooks: TrainingHooks = TrainingHooks(),  # noqa: B008
) -> Optimisation:
    """AdamW (or the method's optimiser) over the trainable parameters (the variational ones in their
    own group, without weight decay: the KL is their regulariser), its warm-up/decay schedule, and
    BLoB's SGD on the KL."""
    variational = variational_parameters(model)
    var_ids = {id(p) for p in variational}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in var_ids], "lr": config.lr}]
    if variational:
        var_lr = (
            config.variational_lr if config.recipe == Recipe.ELBO and config.variational_lr else config.lr
        )
        groups.append({"params": variational, "lr": var_lr, "weight_decay": 0.0})
    main = (
        hooks.make_optimizer(groups)
        if hooks.make_optimizer is not None
        else torch.optim.AdamW(groups, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay)
    )
    schedule = partial(
        lr_factor,
        warmup=round(config.warmup_ratio * config.steps),
        total=config.steps,
        hold_from=hooks.hold_lr_from,
    )
    scheduler = LambdaLR(main, schedule)
    kl = (
        torch.optim.SGD(variational, lr=config.kl_lr)
        if config.recipe == Recipe.BLOB and variational
        else None
    )
    return Optimisation(
        main, scheduler, kl, trainable, bayesian=bool(variational), weight_samples=hooks.weight_samples
    )


def optimiser_step(opt: Optimisation, config: TrainConfig) -> tuple[float, float]:
    """Clip, step the optimiser and its schedule; returns this step's learning rate and its warm-up/decay
    factor. An optimiser that samples the weights read its gradients already (IVON bounds its steps
    by its own clip radius): no clipping there."""
    if config.max_grad_norm and not opt.weight_samples:
        torch.nn.utils.clip_grad_norm_(opt.trainable, config.max_grad_norm)
    opt.main.step()
    group = opt.main.param_groups[0]
    lr, schedule = group["lr"], group["lr"] / group["initial_lr"]
    opt.scheduler.step()
    return lr, schedule


def kl_step(
    model: nn.Module,
    kl_optimizer: torch.optim.SGD,
    config: TrainConfig,
    step: int,
    n_train: int,
    schedule: float,
) -> float:
    """The blob recipe's SGD step on the summed KL (learning rate ``kl_lr * schedule * pi_i``); returns the KL."""
    kl_optimizer.zero_grad(set_to_none=True)
    kl = total_kl(model)
    kl.backward()
    pi = blob_kl_weight(step, n_train, config.batch_size * config.grad_accum)
    for g in kl_optimizer.param_groups:
        g["lr"] = config.kl_lr * schedule * pi
    kl_optimizer.step()
    return distributed.full(kl).item()
