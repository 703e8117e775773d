"""The optimisation settings shared by every trained method (``TrainConfig``)."""

from __future__ import annotations

from dataclasses import dataclass

from scalabl.choices import Recipe
from scalabl.config.fields import JSONConfig, coerce_choices, option, positive_ints


@dataclass
class TrainConfig(JSONConfig):
    """Optimisation settings shared by every trained method (the recipes: :mod:`scalabl.train`)."""

    label = "train config"

    steps: int = option(100, "optimiser steps")
    batch_size: int = option(4, "examples per micro-batch (the global batch under several processes)")
    grad_accum: int = option(1, "micro-batches per optimiser step")
    lr: float = option(2e-3, "AdamW learning rate (ivon: --ivon-lr)")
    adam_eps: float = option(1e-8, "AdamW epsilon (the papers' protocol: 1e-6)")
    weight_decay: float = option(
        0.0, "AdamW weight decay (not on the posterior's parameters); ivon: the prior precision delta"
    )
    warmup_ratio: float = option(0.06, "fraction of the steps of linear warm-up, then linear decay")
    max_grad_norm: float | None = option(
        1.0, "clip the gradient norm to this (0: no clipping; ivon clips its step instead)"
    )
    recipe: Recipe = option(
        Recipe.ELBO, "elbo = one AdamW on NLL + KL/N; blob = BLoB's second SGD optimiser on the KL"
    )
    kl_weight: float = option(1.0, "elbo: weight of KL / N_train")
    kl_warmup_ratio: float = option(0.1, "elbo: fraction of the steps over which the KL weight warms up")
    variational_lr: float | None = option(
        None, "elbo: learning rate of the posterior's parameters", shown="the method's own, else --lr"
    )
    kl_lr: float = option(0.1, "blob: base learning rate of the SGD step on the KL")
    seed: int = option(0, "seed of the adapter init, the data order and the noise")
    log_every: int = option(10, "steps between training log records (each the mean over its steps)")
    val_size: int = option(
        32, "validation questions scored during training for the validation curve (0: no curve)"
    )
    val_every: int = option(0, "steps between validation scorings (0: four over the run)")
    checkpoint_every: int = option(50, "steps between checkpoints (0: only at the end)")

    def __post_init__(self) -> None:
        coerce_choices(self)
        positive_ints(self, "steps", "batch_size", "grad_accum", "log_every")
        for name in ("lr", "kl_lr", "adam_eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)!r}")
        if self.variational_lr is not None and self.variational_lr <= 0:
            raise ValueError(f"variational_lr: must be > 0 or None, got {self.variational_lr!r}")
        for name in ("warmup_ratio", "kl_warmup_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("val_size", "val_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name}: must be an integer >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every: must be an integer >= 0, got {self.checkpoint_every!r}")
        if self.weight_decay < 0 or self.kl_weight < 0:
            raise ValueError("weight_decay and kl_weight must be >= 0")

    @property
    def validation_interval(self) -> int:
        """Steps between validation scorings (``val_every``, or four over the run)."""
        return self.val_every or max(1, self.steps // 4)
