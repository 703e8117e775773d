"""A run's report: report.md with its tables, and the plots beside it, from the run folder alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scalabl.io import write_text
from scalabl.plots import (
    plot_posterior_modules,
    plot_rejection_curves,
    plot_reliability,
    plot_risk_coverage,
    plot_training_curves,
)
from scalabl.results import evaluations
from scalabl.run_folder import REJECTION_PLOT, REPORT_FILE, RunFolder
from scalabl.run_generation import read_generations
from scalabl.tables import (
    comparison_table,
    decisions_table,
    generation_scores_table,
    ood_section,
    selective_table,
)

# the accuracy-rejection curves drawn (counts of answers make steps, not curves)
PLOTTED_SCORES = ("msp_single", "msp", "predictive_entropy", "semantic_entropy", "mutual_information")


def posterior_summary(history: list[dict[str, Any]]) -> str | None:
    """One sentence on the posterior at the end of training (None for a deterministic method)."""
    if not history or "sigma" not in history[-1]:
        return None
    last = history[-1]
    return (
        f"Posterior at the end of training: mean sigma {last['sigma']:.4f}, mean mu {last['mu']:.4f}, "
        f"mean sigma/mu {last['sigma_over_mu']:.4f}."
    )


def decisions_section(m: dict[str, Any]) -> list[str]:
    """The decision rules' lines of the report (none before ``scalabl calibrate-decisions``)."""
    scored = m.get("decisions")
    if not scored:
        return []
    cal = scored["calibration"]
    return [
        "## Decisions with guarantees",
        "",
        f"Fitted on {cal['n']} questions ({cal['examples']}), S = {cal['n_samples']}; "
        "scored on the questions above. Conformal sets: split conformal, P(true answer in set) >= 1 - alpha. "
        "Selective answering: answer when the top probability reaches the threshold; the error rate "
        "among answered questions is at most the target with probability >= 1 - delta.",
        "",
        decisions_table(scored),
        "",
    ]


def training_section(folder: RunFolder, m: dict[str, Any], name: str) -> list[str]:
    """training.png (training and validation NLL, sigma/mu) and the posterior per module, as report lines."""
    history = folder.history()
    if history:
        plot_keys = ("nll", "sigma_over_mu") if any("sigma" in h for h in history) else ("nll",)
        curves = {f"{name} train": history}
        held_out = [{"step": h["step"], "nll": h["val_nll"]} for h in history if "val_nll" in h]
        if held_out:  # the validation NLL on the same panel: overfitting is where they part
            curves[f"{name} validation"] = held_out
        plot_training_curves(curves, folder / "training.png", keys=plot_keys)
        training = ["![training](training.png)", ""]
        if any(h.get("modules") for h in history):
            plot_posterior_modules(history, folder / "posterior_modules.png")
            training += ["![posterior per module](posterior_modules.png)", ""]
    else:
        training = [f"No training in this run: the adapter comes from `{m.get('from_run')}`.", ""]
    return training


def write_generation_report(folder: RunFolder, m: dict[str, Any], training: list[str]) -> None:
    """report.md of a run on an open QA task: accuracy, each uncertainty score's AUROC and PRR, and
    the accuracy-rejection curves (rejection.png)."""
    records = read_generations(folder.path)
    g = m["generation"]
    correct = np.array([r["correct"] for r in records], dtype=bool)
    curves = {
        name: (np.array([r["scores"][name] for r in records]), correct)
        for name in g["scores"]
        if name in PLOTTED_SCORES
    }
    if curves:
        plot_rejection_curves(curves, folder / REJECTION_PLOT, title=f"{m['method']} on {m['task']}")
    c = g["config"]
    lines = [
        f"# {m['method']} on {m['task']} (open answers)",
        "",
        f"Model `{m['model']}`, {m['n_train']} training questions, {m['train_steps']} steps, "
        f"{m.get('eval_split', 'test')} n = {g['n']}. LoRA parameters {m['lora_parameters']:,}; "
        f"extra parameters over LoRA {m['extra_parameters']:,}.",
        "",
        f"Answer: greedy at the posterior mean; {g['answers_per_question']} answers beside it "
        f"({c['decoding']} decoding, one per posterior sample). Correct = normalised exact match with a "
        f"reference. Accuracy {g['accuracy']:.3f}, token F1 {g['f1']:.3f}"
        + (
            f", accuracy of the sampled answers {g['sample_accuracy']:.3f}"
            if g["sample_accuracy"] is not None
            else ""
        )
        + f". Generating the S answers and scoring them cost {g['timing']['cost_vs_one_answer']:.1f}x "
        "the greedy answer alone.",
        "",
        generation_scores_table({m["method"]: m}),
        "",
        "AUROC: how well the score tells wrong answers from right ones (0.5 = chance). PRR: the "
        "prediction-rejection ratio (1 = rejects the wrong answers first, 0 = no better than random).",
        "",
        *(["![accuracy-rejection curves](rejection.png)", ""] if curves else []),
        *training,
    ]
    write_text(folder / REPORT_FILE, "\n".join(lines))


def write_run_report(run_dir: str | Path) -> None:
    """report.md + reliability.png + selective.png + training.png for one run folder."""
    folder = RunFolder(run_dir)
    m = folder.read_metrics()
    name = m["method"]
    if "generation" in m:
        write_generation_report(folder, m, training_section(folder, m, name))
        return
    split = m.get("eval_split", "test")
    curves = {f"{name} S={s}": folder.predictions(s) for s, _ in evaluations(m["eval"])}
    plot_reliability(
        curves, folder / "reliability.png", title=f"{name} on {m['task']} ({split}, n={m['n_test']})"
    )
    plot_risk_coverage(curves, folder / "selective.png", title=f"selective prediction, {m['task']} {split}")
    training = training_section(folder, m, name)
    fitted = {k: v for k, v in m.get("fitted", {}).items() if isinstance(v, int | float)}
    lines = [
        f"# {name} on {m['task']}",
        "",
        f"Model `{m['model']}`, {m['n_train']} training examples, {m['train_steps']} steps, "
        f"{split} n = {m['n_test']}. LoRA parameters {m['lora_parameters']:,}; "
        f"extra parameters over LoRA {m['extra_parameters']:,}.",
        "",
        comparison_table({name: m}),
        "",
        *([summary, ""] if (summary := posterior_summary(folder.history())) else []),
        *(
            ["Fitted post hoc: " + ", ".join(f"{k} = {v:.4g}" for k, v in fitted.items()) + ".", ""]
            if fitted
            else []
        ),
        "ECE: 15 equal-width bins on the max probability. NLL: mean natural-log negative log-likelihood. "
        "Brier: sum over classes. S = posterior samples in the Bayesian model average (0 = posterior mean). "
        "MI: mutual information between the prediction and the posterior sample (disagreement of the samples).",
        "",
        "![reliability](reliability.png)",
        "",
        "## Selective prediction",
        "",
        "Answer only the most confident questions: accuracy at 50/80/90% coverage and the area under the "
        "risk-coverage curve (AURC, lower is better).",
        "",
        selective_table({name: m}),
        "",
        "![selective](selective.png)",
        "",
        *decisions_section(m),
        *ood_section({name: m}),
        *training,
    ]
    write_text(folder / REPORT_FILE, "\n".join(lines))
