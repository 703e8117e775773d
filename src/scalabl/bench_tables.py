"""The tables and plots of a bench grid (:func:`write_tables`): one table per metric with mean ± std
over seeds, paired differences against a reference method, reliability diagrams and risk-coverage
curves, and ``summary.md`` with all of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from scalabl.generation_tables import write_generation_tables
from scalabl.io import write_json, write_text
from scalabl.plots import plot_reliability, plot_risk_coverage
from scalabl.qa import is_qa_task
from scalabl.results import headline
from scalabl.run_folder import RunFolder
from scalabl.tables import (
    METRICS,
    PAIRED,
    paired_markdown,
    paired_rows,
    table_rows,
    to_csv,
    to_latex,
    to_markdown,
)


class TabulatedGrid(Protocol):
    """What the tables read of a bench config (:class:`scalabl.bench.BenchConfig`)."""

    tasks: list[str]
    methods: dict[str, Any]
    ood: dict[str, list[str]]
    seeds: list[int]
    out: str
    reference: str | None

    def finished_dir(self, label: str, task: str, seed: int) -> Path | None: ...


# what write_tables leaves under ``out``: archived beside the cells, so the committed tables match them
TABLE_FILES = (
    "summary.md",
    "results.json",
    "tables/*",
    "reliability_*.png",
    "selective_*.png",
    "rejection_*.png",
)


def write_tables(
    config: TabulatedGrid, results: dict[str, Any], *, plots: bool = True, into: Path | None = None
) -> None:
    """tables/METRIC.{md,csv,tex}, summary.md, reliability_TASK.png and selective_TASK.png (the
    risk-coverage curves, unless ``plots=False``) under ``into`` (default ``config.out``)."""
    out = Path(config.out) if into is None else Path(into)
    generation = write_generation_tables(config, results, out, plots=plots)
    everything = results
    results = {  # the multiple-choice cells (open QA cells are tabulated by their answers' scores)
        label: {task: runs for task, runs in per.items() if not is_qa_task(task)}
        for label, per in results.items()
    }
    sections = []
    for metric, (header, _, _) in METRICS.items():
        columns, rows = table_rows(config, results, metric)
        if not columns or all(c is None for r in rows for c in r[1:]):
            continue
        write_text(out / "tables" / f"{metric}.md", to_markdown(metric, columns, rows) + "\n")
        write_text(out / "tables" / f"{metric}.csv", to_csv(metric, columns, rows))
        write_text(out / "tables" / f"{metric}.tex", to_latex(metric, columns, rows))
        sections += [f"## {header}", "", to_markdown(metric, columns, rows), ""]
    reference = config.reference or next(iter(config.methods))
    if len(config.methods) > 1:
        sections += [
            f"## Against {reference}, paired by seed",
            "",
            f"Each method's value minus {reference}'s on the same task and seed: mean ± std over the "
            f"seeds both finished, and (k/n) = better than {reference} on k of n seeds.",
            "",
        ]
        for metric in PAIRED:
            columns, rows = paired_rows(config, results, metric, reference)
            if all(c is None for r in rows for c in r[1:]):
                continue
            table = paired_markdown(metric, columns, rows)
            write_text(out / "tables" / f"{metric}_vs_{reference}.md", table + "\n")
            sections += [f"### {METRICS[metric][0]}", "", table, ""]
    for task in config.tasks if plots else ():
        curves = {}
        for label in config.methods:
            runs = results.get(label, {}).get(task, {})
            parts = [
                RunFolder(config.finished_dir(label, task, seed)).predictions(headline(m))
                for seed, m in runs.items()
            ]
            if parts:
                curves[label] = (torch.cat([p for p, _ in parts]), torch.cat([y for _, y in parts]))
        if curves:
            name = task.replace(":", "_")
            plot_reliability(curves, out / f"reliability_{name}.png", title=f"{task}, seeds pooled")
            plot_risk_coverage(curves, out / f"selective_{name}.png", title=f"{task}, seeds pooled")
    first = next((m for per in results.values() for runs in per.values() for m in runs.values()), None)
    head = [
        "# Benchmark",
        "",
        f"Methods {', '.join(config.methods)}; tasks {', '.join(config.tasks)}; seeds {config.seeds}. "
        "Cells: mean ± std over seeds (sample std), each method at its first sample count "
        "(S for Bayesian methods, the members for an ensemble).",
    ]
    if first is not None:
        head.append(
            f"Model `{first['model']}`, {first['train_steps']} training steps, test n ≤ {first['n_test']}."
        )
    write_text(out / "summary.md", "\n".join([*head, "", *sections, *generation]))
    write_json(out / "results.json", everything)
