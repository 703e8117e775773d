"""Pool-based active learning (``scalabl active``): rounds of train, evaluate, acquire.

The pool is the first ``pool`` questions of the run's training split; ``initial`` of them are
labelled at random (``al_seed``). Each round trains the run's method on the labelled questions
(cold: a fresh adapter with the run's seed; warm: the previous round's adapter, trained on with a
new optimiser), fits what the method fits after training on the validation split, evaluates the
model average with the run's first sample count on the fixed test split (the first ``max_test``),
and then, but for the last round, scores every unlabelled question of the pool with
``acquisition_samples`` posterior samples and labels the ``acquire`` highest scores
(:mod:`scalabl.acquisition`). Labels are the task's own: the pool's answers are hidden from the
acquisition, not missing.

The folder: ``active.json`` (the run and active configs), ``rounds/<r>/`` (``round.json``: the
labelled and acquired pool positions, the scores, the test metrics; and the round's adapter),
written atomically when the round is done, so an interrupted run resumes at the round it was in,
from its training checkpoint (``work/``); then ``curve.json``, ``curve.png`` and ``report.md``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from scalabl.acquisition import acquisition_scores, random_k, top_k
from scalabl.api import BayesianLoRA
from scalabl.choices import Acquisition, Start
from scalabl.config import RunConfig
from scalabl.config.active import ActiveConfig
from scalabl.io import atomic_dir, output_folder, write_json, write_text
from scalabl.methods import get_method
from scalabl.metrics import compute_metrics
from scalabl.plots import plot_active_curves
from scalabl.runs import load_base, new_adapter

CONFIG_FILE = "active.json"
ROUND_FILE = "round.json"
OWN = (CONFIG_FILE, "rounds", "work", "curve.json", "curve.png", "report.md")
SHOWN = ("acc", "nll", "ece", "brier")


def check_acquisition(run: RunConfig, active: ActiveConfig) -> None:
    """BALD needs disagreeing samples: refuse it for a method with one pass."""
    if run.open_qa:
        raise ValueError(f"task {run.task!r}: active learning acquires multiple-choice questions")
    for name, unset in (("ood", ()), ("from_run", None), ("fsdp", False), ("max_train", None)):
        if getattr(run, name) != unset:
            raise ValueError(f"{name}: not an option of active learning (the pool is the training split)")
    if run.eval_split != "test":
        raise ValueError("eval_split: active learning evaluates each round on the test split")
    method = get_method(run.method)
    laplace = run.method.method == "laplace" or (
        run.method.method == "blora_xs" and run.method.xs_posterior == "laplace"
    )
    if active.acquisition == Acquisition.BALD and laplace and run.method.laplace_predictive == "glm":
        raise ValueError(
            "acquisition: bald needs per-sample predictives; Laplace's glm predictive is one averaged "
            "distribution: use --laplace-predictive mc, or entropy / least_confidence"
        )
    if active.acquisition == Acquisition.BALD and method.samples_for(active.acquisition_samples) < 2:
        raise ValueError(
            f"acquisition: bald is the disagreement of posterior samples; {run.method.method.value} "
            f"with acquisition_samples {active.acquisition_samples} runs one pass (BALD = 0): use a "
            "Bayesian method or the ensemble, or entropy / least_confidence / random"
        )


def _configs(run: RunConfig, active: ActiveConfig) -> dict[str, Any]:
    return {"run": run.to_dict(), "active": active.to_dict()}


def _check_same(folder: Path, configs: dict[str, Any]) -> None:
    """A folder continues only the active run it holds."""
    saved = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    for part in ("run", "active"):
        for key, value in configs[part].items():
            if saved.get(part, {}).get(key) != value:
                raise ValueError(
                    f"{folder / CONFIG_FILE}: written with {part}.{key} = {saved.get(part, {}).get(key)!r}, "
                    f"this run has {value!r}; continue with the same settings or choose a new folder"
                )


def completed_rounds(folder: Path) -> list[dict[str, Any]]:
    """The round records written so far, in order (a round without its record was interrupted)."""
    rounds = []
    while (path := folder / "rounds" / str(len(rounds)) / ROUND_FILE).is_file():
        rounds.append(json.loads(path.read_text(encoding="utf-8")))
    return rounds


def run_active(
    run: RunConfig, active: ActiveConfig, out: str | Path, *, progress: bool = True, overwrite: bool = False
) -> list[dict[str, Any]]:
    """Run (or continue) the rounds in ``out``; returns one record per round (labels, test metrics)."""
    check_acquisition(run, active)
    folder = Path(out)
    configs = _configs(run, active)
    resuming = (folder / CONFIG_FILE).is_file() and not overwrite
    if resuming:
        _check_same(folder, configs)
    with output_folder(folder, OWN, overwrite=overwrite, continues=resuming, command="scalabl active"):
        if overwrite:  # an earlier run's training checkpoints must not be resumed
            shutil.rmtree(folder / "work", ignore_errors=True)
        write_json(folder / CONFIG_FILE, configs)
        splits = run.splits()
        pool = list(splits.train[: active.pool])
        if len(pool) < active.pool:
            raise ValueError(f"pool: {run.task} has {len(pool)} training questions, fewer than {active.pool}")
        test = splits.test[: run.max_test] if run.max_test else splits.test
        validation = splits.validation[: run.max_validation] if run.max_validation else splits.validation
        rounds = [] if overwrite else completed_rounds(folder)
        for r in range(len(rounds), active.rounds + 1):
            if r == 0:
                labelled = random_k(len(pool), active.initial, active.al_seed)
            else:
                labelled = rounds[-1]["labelled"] + rounds[-1]["acquired"]
            record = _round(r, labelled, pool, test, validation, run, active, folder, progress=progress)
            rounds.append(record)
        write_json(folder / "curve.json", [{k: v for k, v in rec.items() if k != "scores"} for rec in rounds])
        plot_active_curves({active.acquisition.value: rounds}, folder / "curve.png")
        write_text(folder / "report.md", report(run, active, rounds))
        shutil.rmtree(folder / "work", ignore_errors=True)
    return rounds


def _round(
    r: int,
    labelled: list[int],
    pool: list[Any],
    test: list[Any],
    validation: list[Any],
    run: RunConfig,
    active: ActiveConfig,
    folder: Path,
    *,
    progress: bool,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    model, tokenizer = load_base(run)
    if active.start == Start.WARM and r > 0:
        blora = BayesianLoRA.load(folder / "rounds" / str(r - 1), model, tokenizer)
    else:
        blora = new_adapter(run, model, tokenizer)
    train = [pool[i] for i in labelled]
    # a round's training resumes from its checkpoint; the number of steps is the run's, per round
    work = folder / "work" / f"round{r}"
    blora.fit(
        train,
        run.train,
        checkpoint_dir=work,
        resume=True,
        progress=progress,
        validation=validation,
    )
    blora.calibrate(validation, train=train, config=run.predict_config(run.n_samples[0]))
    prediction = blora.predict(test, run.predict_config(run.n_samples[0], progress=progress))
    labels = torch.tensor([e.label for e in test])
    metrics = compute_metrics(prediction.log_probs, labels)
    acquired: list[int] = []
    scores: list[float] = []
    if r < active.rounds:
        taken = set(labelled)
        unlabelled = [i for i in range(len(pool)) if i not in taken]
        if active.acquisition == Acquisition.RANDOM:
            picks = random_k(len(unlabelled), active.acquire, active.al_seed * 1009 + r + 1)
        else:
            samples = blora.predict(
                [pool[i] for i in unlabelled],
                run.predict_config(active.acquisition_samples, progress=progress),
            ).samples
            if active.acquisition == Acquisition.BALD and samples.shape[0] < 2:
                raise ValueError(
                    f"acquisition: bald needs per-sample predictives; {run.method.method.value} returned one "
                    "averaged predictive (laplace: use --laplace-predictive mc)"
                )
            values = acquisition_scores(samples, active.acquisition)
            picks = top_k(values, active.acquire)
            scores = [float(values[i]) for i in picks]
        acquired = [unlabelled[i] for i in picks]
    record = {
        "round": r,
        "n_labels": len(labelled),
        "n_test": len(test),
        "labelled": labelled,
        "acquired": acquired,
        "scores": scores,
        "metrics": metrics,
        "seconds": time.perf_counter() - t0,
    }
    with atomic_dir(folder / "rounds" / str(r)) as tmp:
        blora.save(tmp, base_model=run.model)
        write_json(tmp / ROUND_FILE, record)
    shutil.rmtree(work, ignore_errors=True)
    return record


def report(run: RunConfig, active: ActiveConfig, rounds: list[dict[str, Any]]) -> str:
    """report.md: the settings, the learning curve as a table, and what it shows in one sentence."""
    lines = [
        f"# Active learning: {run.method.method.value} on {run.task}, {active.acquisition.value} acquisition",
        "",
        f"Pool {active.pool} training questions, {active.initial} labelled at random (seed {active.al_seed}), "
        f"then {active.rounds} rounds of {active.acquire}; {active.start.value} start, "
        f"{run.train.steps} training steps per round; acquisition on {active.acquisition_samples} posterior "
        f"samples; test: {rounds[0]['n_test']} questions, "
        f"S = {run.n_samples[0]}.",
        "",
        "| round | labels | " + " | ".join(SHOWN) + " | seconds |",
        "|---|---|" + "---|" * len(SHOWN) + "---|",
    ]
    for rec in rounds:
        m = rec["metrics"]
        lines.append(
            f"| {rec['round']} | {rec['n_labels']} | "
            + " | ".join(f"{m[k]:.3f}" for k in SHOWN)
            + f" | {rec['seconds']:.0f} |"
        )
    first, last = rounds[0], rounds[-1]
    lines += [
        "",
        f"From {first['n_labels']} to {last['n_labels']} labels the test accuracy went from "
        f"{first['metrics']['acc']:.3f} to {last['metrics']['acc']:.3f} and the NLL from "
        f"{first['metrics']['nll']:.3f} to {last['metrics']['nll']:.3f}.",
        "",
        "![test accuracy and NLL against labels](curve.png)",
        "",
    ]
    return "\n".join(lines)
