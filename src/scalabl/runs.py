"""A run, start to end: load model and data, wrap, train, fit post hoc, evaluate, and write the run
folder (:mod:`scalabl.run_folder`); and the entry points that resume, load and re-evaluate one."""

from __future__ import annotations

import tempfile
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scalabl import distributed
from scalabl.api import BayesianLoRA
from scalabl.config import RunConfig
from scalabl.evaluation import evaluate_model, untempered_source
from scalabl.models import load_model
from scalabl.report import write_run_report
from scalabl.run_decisions import score_decisions
from scalabl.run_folder import RunFolder
from scalabl.run_generation import evaluate_generation


def _run_facts(config: RunConfig, blora: BayesianLoRA, n_train: int) -> dict[str, Any]:
    """What metrics.json says about the run besides its scores."""
    return {
        "method": config.method.method.value,
        "task": config.task,
        "model": config.model,
        "n_train": n_train,
        "lora_parameters": blora.lora_parameters,
        "extra_parameters": blora.extra_parameters,
        "train_steps": 0 if config.from_run else config.train.steps,
        "from_run": config.from_run,
        "processes": distributed.world(),  # data-parallel processes (1: a plain run)
        "eval_split": config.eval_split.value,  # what n_test counts: the test split, or validation
    }


def load_base(config: RunConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The run's base model and tokenizer, in its dtype, quantisation and device."""
    return load_model(config.model, dtype=config.dtype, device=config.device, quant=config.quant)


def new_adapter(
    config: RunConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> BayesianLoRA:
    """``model`` wrapped with a fresh adapter of the run's method, scored as the run scores."""
    return BayesianLoRA(
        model,
        tokenizer,
        config.method,
        scoring=config.scoring,
        length_norm=config.length_norm,
        truncation=config.truncation,
        max_length=config.max_length,
        seed=config.train.seed,
        gradient_checkpointing=config.gradient_checkpointing,
    )


def train_run(
    config: RunConfig,
    out: str | Path,
    *,
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train and evaluate one method; returns the metrics written to ``out/metrics.json``.

    ``out`` must be a new or empty folder; ``overwrite=True`` writes over an earlier run there
    (only a run's own files are replaced, see :meth:`RunFolder.new_run`). Training checkpoints into
    ``out/checkpoint`` (every ``config.train.checkpoint_every`` steps and at the end); ``resume=True``
    continues the run in ``out`` from there (see :func:`resume_run`).
    """
    home = RunFolder(out)
    guard = nullcontext() if resume or not distributed.is_main() else home.new_run(overwrite=overwrite)
    scratch = None
    folder = home
    if not distributed.is_main():
        # Other processes of a data-parallel run do the same work; the main process writes the run
        # folder, they write their copies to a scratch folder (and read checkpoints from the real one).
        scratch = tempfile.TemporaryDirectory(prefix=f"scalabl-rank{distributed.rank()}-")
        folder = RunFolder(scratch.name)
    with guard:
        metrics = _train_and_evaluate(config, home, folder, progress=progress, resume=resume)
    distributed.barrier()  # the main process's files are complete before any process returns
    if scratch is not None:
        scratch.cleanup()
    return metrics


def _train_and_evaluate(
    config: RunConfig, home: RunFolder, folder: RunFolder, *, progress: bool, resume: bool
) -> dict[str, Any]:
    folder.check_writable()  # before the (possibly long) model load
    splits = config.splits()
    model, tokenizer = load_base(config)
    folder.write_config(config)
    blora = new_adapter(config, model, tokenizer)
    if config.fsdp:
        distributed.shard_model(blora.model)
    folder.check_free_space(sum(p.numel() for n, p in blora.model.named_parameters() if "lora_" in n))
    if not resume:
        folder.clear_history()
    folder.clear_decisions()  # fitted on an earlier adapter

    t0 = time.perf_counter()
    if config.from_run:
        blora.init_from(config.from_run)
    else:
        blora.fit(
            splits.train,
            config.train,
            # sharded optimiser state is not checkpointed yet: an FSDP run does not resume
            checkpoint_dir=None if config.fsdp else home.checkpoint_dir,
            resume=resume,
            progress=progress,
            on_log=folder.append_history,
            validation=splits.validation,
        )
        # Rewritten whole: after a kill the file may hold lines past the checkpoint it resumed from.
        folder.write_history(blora.history)
    # A resumed run's history carries the time spent before the interruption.
    train_seconds = blora.history[-1]["seconds"] if blora.history else time.perf_counter() - t0
    t0 = time.perf_counter()
    validation = splits.validation[: config.max_validation] if config.max_validation else splits.validation
    fitted = blora.calibrate(
        validation, train=splits.train, config=config.predict_config(config.n_samples[0], progress=progress)
    )
    post_fit_seconds = time.perf_counter() - t0
    blora.save(folder.path, base_model=config.model)

    metrics = {
        **_run_facts(config, blora, len(splits.train)),
        "train_seconds": train_seconds,
        "post_fit_seconds": post_fit_seconds,
        "fitted": fitted,
        "final_train_nll": blora.history[-1]["nll"] if blora.history else None,
    }
    metrics.update(_evaluate(blora, config, folder, progress=progress))
    folder.write_metrics(metrics)
    write_run_report(folder.path)
    return metrics


def _evaluate(blora: BayesianLoRA, config: RunConfig, folder: RunFolder, *, progress: bool) -> dict[str, Any]:
    """The evaluation a run's task has: answers generated for an open QA task, chosen otherwise."""
    if config.open_qa:
        return evaluate_generation(blora, config, folder.path, progress=progress)
    untempered = untempered_source(config, blora)
    return evaluate_model(blora, config, folder.path, progress=progress, untempered=untempered)


def resume_run(run_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Continue an interrupted ``train_run`` in ``run_dir`` with the run's own config.json."""
    return train_run(RunFolder(run_dir).read_config(), run_dir, progress=progress, resume=True)


def load_run(run_dir: str | Path) -> tuple[RunConfig, BayesianLoRA]:
    """Rebuild a run's model with its trained adapter."""
    config = RunFolder(run_dir).read_config()
    model, tokenizer = load_base(config)
    return config, BayesianLoRA.load(run_dir, model, tokenizer)


def evaluate_run(
    run_dir: str | Path,
    *,
    n_samples: tuple[int, ...] | None = None,
    max_test: int | None = None,
    ood: tuple[str, ...] | None = None,
    sample_modules: str | None = None,
    generate: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Re-evaluate a run folder's adapter; rewrites metrics.json (keeping training figures), the
    predictions (generations, on an open QA task) and the report, the run's own files, and nothing
    else. ``generate``: fields of the run's :class:`GenerateConfig` to change."""
    folder = RunFolder(run_dir)
    config, blora = load_run(run_dir)
    given = (
        ("n_samples", n_samples),
        ("max_test", max_test),
        ("ood", ood),
        ("sample_modules", sample_modules),
    )
    config = replace(config, **{k: v for k, v in given if v})
    if generate:
        config = replace(config, generate=replace(config.generate, **generate))
    metrics = folder.read_metrics()
    metrics.update(_run_facts(config, blora, len(config.splits().train)))
    metrics.update(_evaluate(blora, config, folder, progress=progress))
    decisions = (
        None if config.open_qa else score_decisions(folder, config.eval_split.value)
    )  # the saved rules on the new predictions
    metrics.pop("decisions", None)
    if decisions is not None:
        metrics["decisions"] = decisions
    folder.write_metrics(metrics)
    write_run_report(folder.path)
    return metrics
