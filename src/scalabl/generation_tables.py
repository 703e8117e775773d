"""The tables of a bench grid's open QA cells: per task, each method's accuracy, the cost of its S
answers against one greedy answer, and every uncertainty score's AUROC (wrong vs right) and PRR, as
mean ± std over seeds, and the seed-pooled accuracy-rejection curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from scalabl.plots import plot_rejection_curves
from scalabl.run_folder import RunFolder
from scalabl.run_generation import read_generations
from scalabl.tables import mean_std
from scalabl.uncertainty import SCORES

PLOTTED = ("msp_single", "msp", "semantic_entropy", "mutual_information")


def _cell(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    mean, std = mean_std([scale * v for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def generation_summary(runs_by_method: dict[str, dict[int, dict[str, Any]]], task: str) -> list[str]:
    """Markdown lines for one task: ``runs_by_method[label][seed]`` = a cell's metrics.json."""
    methods = [label for label, runs in runs_by_method.items() if runs]
    if not methods:
        return []
    g = {label: [m["generation"] for m in runs_by_method[label].values()] for label in methods}
    header = "| | " + " | ".join(f"{label} (n={len(g[label])})" for label in methods) + " |"
    lines = [f"### {task}", "", header, "|---" * (len(methods) + 1) + "|"]
    lines.append(
        "| accuracy (EM, %) | "
        + " | ".join(_cell([x["accuracy"] for x in g[m]], 100, 1) for m in methods)
        + " |"
    )
    lines.append(
        "| token F1 (%) | " + " | ".join(_cell([x["f1"] for x in g[m]], 100, 1) for m in methods) + " |"
    )
    lines.append(
        "| answers per question | " + " | ".join(str(g[m][0]["answers_per_question"]) for m in methods) + " |"
    )
    lines.append(
        "| cost vs one greedy answer | "
        + " | ".join(_cell([x["timing"]["cost_vs_one_answer"] for x in g[m]], 1, 1) + "×" for m in methods)
        + " |"
    )
    for quality, title in (("auroc", "AUROC"), ("prr", "PRR")):
        for score in SCORES:
            values = {m: [x["scores"][score][quality] for x in g[m] if score in x["scores"]] for m in methods}
            if not any(values.values()):
                continue
            lines.append(f"| {score}: {title} | " + " | ".join(_cell(values[m]) for m in methods) + " |")
    return [*lines, ""]


def plot_pooled_rejection(
    folders_by_method: dict[str, list[Path]], out: Path, *, score: str, title: str
) -> bool:
    """Accuracy-rejection curves of ``score`` for each method, its seeds' questions pooled; False when
    no cell kept its generations."""
    curves = {}
    for label, folders in folders_by_method.items():
        records = [r for f in folders if (f / "generations.jsonl").is_file() for r in read_generations(f)]
        records = [r for r in records if score in r["scores"]]
        if records:
            u = np.array([r["scores"][score] for r in records])
            curves[label] = (u, np.array([r["correct"] for r in records], dtype=bool))
    if curves:
        plot_rejection_curves(curves, out, title=title)
    return bool(curves)


def write_generation_tables(
    grid: Any, results: dict[str, Any], out: Path, *, plots: bool = True
) -> list[str]:
    """summary lines (and ``rejection_TASK.png`` for the posterior average's sequence probability)
    for every open QA task of a bench grid; empty when the grid has none."""
    sections: list[str] = []
    for task in grid.tasks:
        runs = {label: results.get(label, {}).get(task, {}) for label in grid.methods}
        runs = {label: r for label, r in runs.items() if r and all("generation" in m for m in r.values())}
        if not runs:
            continue
        sections += generation_summary(runs, task)
        if plots:
            folders = {
                label: [Path(RunFolder(grid.finished_dir(label, task, seed)).path) for seed in r]
                for label, r in runs.items()
            }
            name = task.replace(":", "_").replace("/", "_")
            if plot_pooled_rejection(
                folders, out / f"rejection_{name}.png", score="msp", title=f"{task}: msp, seeds pooled"
            ):
                sections += [f"![accuracy-rejection, {task}](rejection_{name}.png)", ""]
    if sections:
        sections = [
            "## Open answers",
            "",
            "Accuracy of the answer (greedy at the posterior mean; an ensemble: its members' majority), and "
            "how well each uncertainty score tells wrong answers from right ones: AUROC (0.5 = chance) and "
            "PRR (1 = rejects the wrong answers first, 0 = random). Mean ± std over seeds.",
            "",
            *sections,
        ]
    return sections
