"""The training loop: :func:`fit`, one function to read top to bottom, and the steps it calls.

Objective per training example (DESIGN §1): ``mean NLL + kl_weight * KL / N_train``. Two recipes:

* ``elbo``: one AdamW optimiser on the sum above; ``kl_weight`` warmed up linearly over
  ``kl_warmup_ratio`` of the steps; the variational parameters may have their own learning rate.
* ``blob``: the reference recipe from BLoB. AdamW (warm-up then linear decay) on the NLL only; after
  every NLL step a plain SGD optimiser steps on the summed KL with learning rate
  ``kl_lr * schedule(step) * pi_i``, ``pi_i = 2^i / (2^(M+1) - 1)``, ``i = (step mod M) + 1``,
  ``M = floor(100 * N_train^(pi/8) / batch_size)``.

The options are :class:`scalabl.config.TrainConfig`'s; the optimisers, their schedule and the hooks
by which a method changes the loop are :mod:`scalabl.optimisation`'s.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from scalabl import distributed
from scalabl.bayesian import clear_noise, posterior_stats, sampling, total_kl
from scalabl.checkpoint import CHECKPOINT_FILE, read_checkpoint, restore_checkpoint, save_checkpoint
from scalabl.choices import Recipe
from scalabl.config import TrainConfig
from scalabl.examples import Example
from scalabl.held_out import packs_4bit_for_cpu, validation_scores
from scalabl.optimisation import Optimisation, TrainingHooks, kl_step, optimisation, optimiser_step
from scalabl.scoring import Scorer

log = logging.getLogger(__name__)


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


@dataclass
class LoopState:
    """Everything the loop carries from step to step (and a checkpoint holds)."""

    batches: BatchStream
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    window: list[tuple[float, float, float]] = field(default_factory=list)  # (nll, kl, KL+penalty term)
    elapsed: float = 0.0
    last_checkpoint: int | None = None
    validated: dict[str, float] = field(default_factory=dict)  # the last validation, for the next log


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
    validation: Sequence[Example] = (),
    hooks: TrainingHooks = TrainingHooks(),  # noqa: B008 - frozen, never mutated
) -> list[dict[str, Any]]:
    """Train the adapter of ``model`` on ``train``; returns the logged history (one dict per log).

    The first ``config.val_size`` examples of ``validation`` are scored (posterior mean, no noise,
    no dropout, no random draw) every ``config.validation_interval`` steps and at the end; the next
    log record carries ``val_nll`` and ``val_acc``, so overfitting shows beside the training NLL.

    The KL of the model's Bayesian modules enters as the recipe says; ``penalty()`` (a negative log
    prior, e.g. MAP's Gaussian prior on the LoRA weights) is added as ``penalty() / N_train``.
    With ``checkpoint_dir``, a checkpoint is written every ``config.checkpoint_every`` steps and at
    the end; ``resume=True`` continues from the checkpoint there (if any) and gives the same result,
    bit for bit on CPU, as a run never interrupted. ``on_log`` sees only the records logged after
    the resumed step.

    ``hooks`` are the method's changes to the loop (:class:`TrainingHooks`: IVON's optimiser and
    weight samples, SWAG's constant-rate phase and its collection after each step).
    """
    if len(train) == 0:
        raise ValueError("training set is empty")
    n_train = len(train)
    generator = torch.Generator().manual_seed(config.seed)
    opt = optimisation(model, config, hooks)
    state = LoopState(BatchStream(n_train, config.batch_size, generator))
    if checkpoint_dir is not None and resume:
        resume_from(checkpoint_dir, model, opt, generator, config, state)

    model.train()
    bar = tqdm(range(state.step, config.steps), desc="train", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter() - state.elapsed
    held_out = list(validation[: config.val_size])
    if held_out and packs_4bit_for_cpu(model):
        log.warning("no validation curve: a 4-bit base on the CPU would be repacked for inference by it")
        held_out = []
    for step in bar:
        batches = [state.batches.next() for _ in range(config.grad_accum)]
        draws = max(1, opt.weight_samples)
        nll = 0.0
        for _ in range(draws):
            with opt.weight_sample():
                opt.main.zero_grad(set_to_none=True)
                nll += nll_backward(model, scorer, train, batches, generator, config.grad_accum) / draws
                kl_value, kl_term = prior_backward(model, opt, config, step, n_train, penalty)
                # Mean over processes: the KL / N term, added by each, then counts once (see
                # scalabl.distributed).
                distributed.average_gradients(opt.trainable)
        nll = distributed.mean(nll)
        check_finite(step, nll, kl_term, state.last_checkpoint, checkpoint_dir)
        lr, schedule = optimiser_step(opt, config)
        if opt.kl is not None:
            kl_value = kl_step(model, opt.kl, config, step, n_train, schedule)
        if hooks.after_step is not None:
            hooks.after_step(step + 1)

        state.window.append((nll, kl_value, kl_term))
        if held_out and ((step + 1) % config.validation_interval == 0 or step + 1 == config.steps):
            state.validated = validation_scores(model, scorer, held_out, config.batch_size)
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            record = log_record(model, state, step, lr, time.perf_counter() - t0)
            if on_log is not None:
                on_log(record)
            bar.set_postfix(progress_fields(record, opt.bayesian))
        every = config.checkpoint_every
        due = (every and (step + 1) % every == 0) or step + 1 == config.steps
        if checkpoint_dir is not None and due and distributed.is_main():
            state.step, state.elapsed = step + 1, time.perf_counter() - t0
            checkpoint(checkpoint_dir, model, opt, generator, state, config)
    model.eval()
    return state.history


# ---- the steps of the loop -------------------------------------------------------------------------
def resume_from(
    folder: str | Path,
    model: nn.Module,
    opt: Optimisation,
    generator: torch.Generator,
    config: TrainConfig,
    state: LoopState,
) -> None:
    """Load the checkpoint in ``folder`` (if there is one) into the live objects and ``state``."""
    found = read_checkpoint(folder)
    if found is None:
        return
    source = str(Path(folder) / CHECKPOINT_FILE)
    loop = restore_checkpoint(
        *found,
        model=model,
        optimizers=opt.optimizers,
        scheduler=opt.scheduler,
        generator=generator,
        source=source,
    )
    _check_same_config(loop["config"], config, source)
    state.batches.load_state(loop["batches"])
    state.history, state.window = loop["history"], [tuple(w) for w in loop["window"]]
    state.step = state.last_checkpoint = loop["step"]
    state.elapsed = loop["elapsed"]


def nll_backward(
    model: nn.Module,
    scorer: Scorer,
    train: Sequence[Example],
    batches: list[list[int]],
    generator: torch.Generator,
    grad_accum: int,
) -> float:
    """Backward of the mean NLL (the scorer's loss: of the labelled choice, or per answer token)
    over the step's micro-batches (indices into ``train``), one posterior sample per example;
    returns the NLL."""
    nll_sum = 0.0
    for indices in batches:
        batch = [train[i] for i in indices]
        # Data parallel: this process's rows of the global batch, with the noise rows one process
        # would draw for them.
        n_global = len(batch)
        rows = distributed.my_rows(n_global)
        batch = [batch[r] for r in rows]
        # The sample stays drawn (and the modules sampling) until backward is done: with gradient
        # checkpointing the backward re-runs the forward and must see the same sample.
        with sampling(model, True):
            try:
                logits = scorer.class_logits(
                    model, batch, sample=True, generator=generator, keep_noise=True, rows_of=(n_global, rows)
                )
                nll = scorer.loss(logits, batch)
                (nll / grad_accum).backward()
            finally:
                clear_noise(model)
        nll_sum += nll.item() / grad_accum
    return nll_sum


def prior_backward(
    model: nn.Module,
    opt: Optimisation,
    config: TrainConfig,
    step: int,
    n_train: int,
    penalty: Callable[[], torch.Tensor] | None,
) -> tuple[float, float]:
    """Backward of the elbo recipe's warmed-up ``KL / N`` and of a ``penalty / N``; returns the KL
    and the term added to the loss."""
    kl_value, term = 0.0, 0.0
    if opt.bayesian and config.recipe == Recipe.ELBO:
        kl_warm = max(1, round(config.kl_warmup_ratio * config.steps))
        weight = config.kl_weight * min(1.0, (step + 1) / kl_warm)
        kl = total_kl(model)
        (weight * kl / n_train).backward()
        kl_value = distributed.full(kl).item()
        term = weight * kl_value / n_train
    if penalty is not None:
        prior_term = penalty() / n_train
        prior_term.backward()
        term += distributed.full(prior_term).item()
    return kl_value, term


def check_finite(
    step: int, nll: float, term: float, last_checkpoint: int | None, checkpoint_dir: str | Path | None
) -> None:
    """Stop before the optimiser writes NaN into the weights; the last checkpoint stays good."""
    if math.isfinite(nll) and math.isfinite(term):
        return
    where = (
        f"the last good checkpoint (step {last_checkpoint}) is kept in {checkpoint_dir}"
        if last_checkpoint is not None
        else "no checkpoint was written before it"
    )
    raise TrainingDiverged(
        f"step {step + 1}: the training loss is not finite (NLL {nll}, KL/penalty term {term}); "
        f"training stopped, {where}. Lower the learning rate or check the data."
    )


def log_record(model: nn.Module, state: LoopState, step: int, lr: float, seconds: float) -> dict[str, Any]:
    """Average the window since the last log into a history record (with the posterior's stats)."""
    nll, kl, term = (sum(w[k] for w in state.window) / len(state.window) for k in range(3))
    state.window.clear()
    record: dict[str, Any] = {
        "step": step + 1,
        "nll": nll,
        "kl": kl,
        # the objective the optimiser saw: NLL + the warmed-up KL / N (elbo) + penalty / N (map);
        # NLL alone (blob)
        "loss": nll + term,
        "lr": lr,
        "seconds": seconds,
        **state.validated,
    }
    state.validated = {}
    stats = posterior_stats(model)
    if stats:
        for key in ("sigma", "mu", "sigma_over_mu"):
            record[key] = sum(s[key] for s in stats.values()) / len(stats)
        record["modules"] = stats
    state.history.append(record)
    return record


def progress_fields(record: dict[str, Any], bayesian: bool) -> dict[str, str]:
    shown = {"nll": f"{record['nll']:.3f}"}
    if "val_nll" in record:
        shown["val"] = f"{record['val_nll']:.3f}"
    if bayesian:
        shown["kl"] = f"{record['kl']:.1f}"
        if "sigma" in record:
            shown["sigma"] = f"{record['sigma']:.3f}"
    return shown


def checkpoint(
    folder: str | Path,
    model: nn.Module,
    opt: Optimisation,
    generator: torch.Generator,
    state: LoopState,
    config: TrainConfig,
) -> None:
    save_checkpoint(
        folder,
        model=model,
        optimizers=opt.optimizers,
        scheduler=opt.scheduler,
        generator=generator,
        loop_state={
            "step": state.step,
            "batches": state.batches.state(),
            "history": state.history,
            "window": [list(w) for w in state.window],
            "elapsed": state.elapsed,
            "config": config.to_dict(),
        },
    )
    state.last_checkpoint = state.step


def _check_same_config(saved: dict[str, Any], config: TrainConfig, source: str) -> None:
    """A checkpoint resumes only the run it came from (the checkpoint interval may change)."""
    current = config.to_dict()
    for key, value in saved.items():
        if key != "checkpoint_every" and current.get(key) != value:
            raise ValueError(
                f"{source}: written with {key} = {value!r}, this run has {current.get(key)!r}; "
                "resume with the same training config or start a new run folder"
            )
