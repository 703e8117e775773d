"""The training loop: one function to read top to bottom.

Objective per training example (DESIGN §1): ``mean NLL + kl_weight * KL / N_train``. Two recipes:

* ``elbo``: one AdamW optimiser on the sum above; ``kl_weight`` warmed up linearly over
  ``kl_warmup_ratio`` of the steps; the variational parameters may have their own learning rate.
* ``blob``: the reference recipe from BLoB. AdamW (warm-up then linear decay) on the NLL only; after
  every NLL step a plain SGD optimiser steps on the summed KL with learning rate
  ``kl_lr * schedule(step) * pi_i``, ``pi_i = 2^i / (2^(M+1) - 1)``, ``i = (step mod M) + 1``,
  ``M = floor(100 * N_train^(pi/8) / batch_size)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from scalabl import distributed
from scalabl.checkpoint import CHECKPOINT_FILE, read_checkpoint, restore_checkpoint, save_checkpoint
from scalabl.choices import RECIPES
from scalabl.config import check_fields
from scalabl.data import Example
from scalabl.methods.base import clear_noise, posterior_stats, sampling, total_kl, variational_parameters
from scalabl.scoring import Scorer


@dataclass
class TrainConfig:
    """Optimisation settings shared by every trained method."""

    steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_grad_norm: float | None = 1.0
    recipe: str = "elbo"
    kl_weight: float = 1.0
    kl_warmup_ratio: float = 0.1
    variational_lr: float | None = None  # elbo: learning rate of log_mu/log_sigma (None = lr)
    kl_lr: float = 0.1  # blob: base learning rate of the SGD step on the KL
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50  # steps between checkpoints (0: only at the end); needs a checkpoint folder

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        for name in ("lr", "kl_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)!r}")
        if self.variational_lr is not None and self.variational_lr <= 0:
            raise ValueError(f"variational_lr: must be > 0 or None, got {self.variational_lr!r}")
        for name in ("warmup_ratio", "kl_warmup_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every: must be an integer >= 0, got {self.checkpoint_every!r}")
        if self.weight_decay < 0 or self.kl_weight < 0:
            raise ValueError("weight_decay and kl_weight must be >= 0")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe: {self.recipe!r} not in {RECIPES}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        check_fields(cls, d, "train config")
        return cls(**d)


def blob_kl_weight(step: int, n_train: int, batch_size: int) -> float:
    """BLoB's pi_i for the KL step after NLL step ``step`` (0-based), computed in log space."""
    m = max(1, math.floor(100 * n_train ** (math.pi / 8) / batch_size))
    i = step % m + 1
    # log(2^(M+1) - 1) without overflow for large M
    log_denominator = (m + 1) * math.log(2) + math.log1p(-(2.0 ** -(m + 1)))
    return math.exp(i * math.log(2) - log_denominator)


class BatchStream:
    """Endless stream of index batches: a fresh seeded permutation each epoch, last partial kept.

    Its position (the current permutation and the next index) is part of a checkpoint, so a resumed
    run sees the same batches as an uninterrupted one.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.perm: list[int] = []
        self.pos = 0

    def next(self) -> list[int]:
        if self.pos >= len(self.perm):
            self.perm = torch.randperm(self.n, generator=self.generator).tolist()
            self.pos = 0
        batch = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return batch

    def state(self) -> dict[str, Any]:
        return {"perm": self.perm, "pos": self.pos}

    def load_state(self, state: dict[str, Any]) -> None:
        self.perm, self.pos = list(state["perm"]), int(state["pos"])


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


def fit(
    model: nn.Module,
    scorer: Scorer,
    train: Sequence[Example],
    config: TrainConfig,
    *,
    penalty: Callable[[], torch.Tensor] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train the adapter of ``model`` on ``train``; returns the logged history (one dict per log).

    The KL of the model's Bayesian modules enters as the recipe says; ``penalty()`` (a negative log
    prior, e.g. MAP's Gaussian prior on the LoRA weights) is added as ``penalty() / N_train``.
    With ``checkpoint_dir``, a checkpoint is written every ``config.checkpoint_every`` steps and at
    the end; ``resume=True`` continues from the checkpoint there (if any) and gives the same result,
    bit for bit on CPU, as a run never interrupted. ``on_log`` sees only the records logged after
    the resumed step.
    """
    if len(train) == 0:
        raise ValueError("training set is empty")
    n_train = len(train)
    generator = torch.Generator().manual_seed(config.seed)
    device = next(model.parameters()).device

    variational = variational_parameters(model)
    bayesian = bool(variational)  # modules with a fixed posterior (tfb) have no KL to train
    var_ids = {id(p) for p in variational}
    trainable = [p for p in model.parameters() if p.requires_grad]
    rest = [p for p in trainable if id(p) not in var_ids]
    groups = [{"params": rest, "lr": config.lr}]
    if variational:
        var_lr = config.variational_lr if config.recipe == "elbo" and config.variational_lr else config.lr
        # No weight decay on the posterior: the KL is its regulariser.
        groups.append({"params": variational, "lr": var_lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    warmup = round(config.warmup_ratio * config.steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, config.steps)
    optimizers = {"main": optimizer}
    kl_optimizer = None
    if config.recipe == "blob" and bayesian:
        kl_optimizer = optimizers["kl"] = torch.optim.SGD(variational, lr=config.kl_lr)

    batches = BatchStream(n_train, config.batch_size, generator)
    history: list[dict[str, Any]] = []
    window: list[tuple[float, float, float]] = []  # (nll, kl, KL + penalty term) per step since the last log
    start, elapsed, last_checkpoint = 0, 0.0, None
    if checkpoint_dir is not None and resume:
        found = read_checkpoint(checkpoint_dir)
        if found is not None:
            source = str(Path(checkpoint_dir) / CHECKPOINT_FILE)
            loop = restore_checkpoint(
                *found,
                model=model,
                optimizers=optimizers,
                scheduler=scheduler,
                generator=generator,
                source=source,
            )
            _check_same_config(loop["config"], config, source)
            batches.load_state(loop["batches"])
            history, window = loop["history"], [tuple(w) for w in loop["window"]]
            start = last_checkpoint = loop["step"]
            elapsed = loop["elapsed"]

    model.train()
    bar = tqdm(range(start, config.steps), desc="train", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter() - elapsed
    for step in bar:
        optimizer.zero_grad(set_to_none=True)
        nll_sum = 0.0
        for _ in range(config.grad_accum):
            batch = [train[i] for i in batches.next()]
            # Data parallel: this process's rows of the global batch, with the noise rows one
            # process would draw for them.
            n_global = len(batch)
            rows = distributed.my_rows(n_global)
            batch = [batch[r] for r in rows]
            labels = torch.tensor([e.label for e in batch], device=device)
            # The sample stays drawn (and the modules sampling) until backward is done: with
            # gradient checkpointing the backward re-runs the forward and must see the same sample.
            with sampling(model, True):
                try:
                    logits = scorer.class_logits(
                        model,
                        batch,
                        sample=True,
                        generator=generator,
                        keep_noise=True,
                        rows_of=(n_global, rows),
                    )
                    nll = F.cross_entropy(logits, labels)
                    (nll / config.grad_accum).backward()
                finally:
                    clear_noise(model)
            nll_sum += nll.item() / config.grad_accum

        kl_value, kl_term = 0.0, 0.0
        if bayesian and config.recipe == "elbo":
            kl_warm = max(1, round(config.kl_warmup_ratio * config.steps))
            weight = config.kl_weight * min(1.0, (step + 1) / kl_warm)
            kl = total_kl(model)
            (weight * kl / n_train).backward()
            kl_value = distributed.full(kl).item()
            kl_term = weight * kl_value / n_train
        if penalty is not None:
            prior_term = penalty() / n_train
            prior_term.backward()
            kl_term += distributed.full(prior_term).item()
        # Mean over processes: the KL / N term, added by each, then counts once (see scalabl.distributed).
        distributed.average_gradients(trainable)
        nll_sum = distributed.mean(nll_sum)
        if not (math.isfinite(nll_sum) and math.isfinite(kl_term)):
            # Stop before the optimiser writes NaN into the weights; the last checkpoint stays good.
            where = (
                f"the last good checkpoint (step {last_checkpoint}) is kept in {checkpoint_dir}"
                if last_checkpoint is not None
                else "no checkpoint was written before it"
            )
            raise TrainingDiverged(
                f"step {step + 1}: the training loss is not finite (NLL {nll_sum}, KL/penalty term {kl_term}); "
                f"training stopped, {where}. Lower the learning rate or check the data."
            )
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        lr_used = optimizer.param_groups[0]["lr"]
        schedule = lr_used / config.lr  # warm-up/decay factor of this step
        scheduler.step()

        if kl_optimizer is not None:
            kl_optimizer.zero_grad(set_to_none=True)
            kl = total_kl(model)
            kl.backward()
            pi = blob_kl_weight(step, n_train, config.batch_size * config.grad_accum)
            for g in kl_optimizer.param_groups:
                g["lr"] = config.kl_lr * schedule * pi
            kl_optimizer.step()
            kl_value = distributed.full(kl).item()

        window.append((nll_sum, kl_value, kl_term))
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            nll_avg, kl_avg, term_avg = (sum(w[k] for w in window) / len(window) for k in range(3))
            window.clear()
            record: dict[str, Any] = {
                "step": step + 1,
                "nll": nll_avg,
                "kl": kl_avg,
                # the objective the optimiser saw: NLL + the warmed-up KL / N (elbo) + penalty / N (map);
                # NLL alone (blob)
                "loss": nll_avg + term_avg,
                "lr": lr_used,
                "seconds": time.perf_counter() - t0,
            }
            stats = posterior_stats(model)
            if stats:
                record["sigma"] = sum(s["sigma"] for s in stats.values()) / len(stats)
                record["mu"] = sum(s["mu"] for s in stats.values()) / len(stats)
                record["sigma_over_mu"] = sum(s["sigma_over_mu"] for s in stats.values()) / len(stats)
                record["modules"] = stats
            history.append(record)
            if on_log is not None:
                on_log(record)
            shown = {"nll": f"{nll_avg:.3f}"}
            if bayesian:
                shown["kl"] = f"{kl_avg:.1f}"
                if stats:
                    shown["sigma"] = f"{record['sigma']:.3f}"
            bar.set_postfix(shown)
        every = config.checkpoint_every
        due = (every and (step + 1) % every == 0) or step + 1 == config.steps
        if checkpoint_dir is not None and due and distributed.is_main():
            save_checkpoint(
                checkpoint_dir,
                model=model,
                optimizers=optimizers,
                scheduler=scheduler,
                generator=generator,
                loop_state={
                    "step": step + 1,
                    "batches": batches.state(),
                    "history": history,
                    "window": [list(w) for w in window],
                    "elapsed": time.perf_counter() - t0,
                    "config": config.to_dict(),
                },
            )
            last_checkpoint = step + 1
    model.eval()
    return history


def _check_same_config(saved: dict[str, Any], config: TrainConfig, source: str) -> None:
    """A checkpoint resumes only the run it came from (the checkpoint interval may change)."""
    current = config.to_dict()
    for key, value in saved.items():
        if key != "checkpoint_every" and current.get(key) != value:
            raise ValueError(
                f"{source}: written with {key} = {value!r}, this run has {current.get(key)!r}; "
                "resume with the same training config or start a new run folder"
            )
