"""Every table scalabl prints or writes, from results dicts (metrics.json): one markdown builder,
the per-run tables (a run's report, ``scalabl train``, the demo) and the grid tables of a bench
(mean ± std over seeds, paired against a reference, as markdown, CSV and LaTeX)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from scalabl.results import entry, evaluations, headline


# ---- markdown ----------------------------------------------------------------------------------
def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return ""
    # bool is an int, not a float, so it prints as True/False; numpy floats are formatted like floats.
    text = fmt.format(value) if isinstance(value, (float, np.floating)) else str(value)
    # A literal pipe would split the cell.
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(
    rows: list[dict],
    columns: list[str],
    headers: dict[str, str] | None = None,
    floatfmt: dict[str, str] | None = None,
) -> str:
    """Render ``rows`` as a GitHub markdown table with one column per entry of ``columns``.

    ``headers`` maps a column key to its header text (default: the key). ``floatfmt`` maps a column key to
    a ``str.format`` pattern applied to float values (default ``"{:.4f}"``); other values use ``str`` and
    missing or None values give an empty cell. The result ends with a newline.
    """
    headers = headers or {}
    floatfmt = floatfmt or {}
    lines = [
        "| " + " | ".join(_cell(headers.get(c, c), "{}") for c in columns) + " |",
        "|" + "|".join(" --- " for _ in columns) + "|",
    ]
    for row in rows:
        cells = (_cell(row.get(c), floatfmt.get(c, "{:.4f}")) for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---- one run (or a few side by side) -----------------------------------------------------------
COLUMNS = ["model", "S", "acc", "ece", "nll", "brier", "mi", "extra", "train_s", "eval_s"]
HEADERS = {
    "model": "method",
    "S": "S",
    "acc": "ACC",
    "ece": "ECE (%)",
    "nll": "NLL",
    "brier": "Brier",
    "mi": "MI (nats)",
    "extra": "extra params",
    "train_s": "train (s)",
    "eval_s": "eval (s)",
}
FORMATS = {
    "acc": "{:.3f}",
    "ece": "{:.1f}",
    "nll": "{:.3f}",
    "brier": "{:.3f}",
    "mi": "{:.4f}",
    "extra": "{:,}",
    "train_s": "{:.0f}",
    "eval_s": "{:.0f}",
}
SELECTIVE = ["aurc", "acc_cov50", "acc_cov80", "acc_cov90"]


def comparison_table(metrics_by_name: dict[str, dict[str, Any]]) -> str:
    """Markdown table of every method x number of samples."""
    rows = [
        {
            "model": name,
            "S": s,
            "acc": r["acc"],
            "ece": 100 * r["ece"],
            "nll": r["nll"],
            "brier": r["brier"],
            "mi": r.get("mi", float("nan")),
            "extra": m.get("extra_parameters", 0),
            # training plus post-hoc fitting (TFB's search, Laplace's Hessian, temperature)
            "train_s": m.get("train_seconds", float("nan")) + m.get("post_fit_seconds", 0.0),
            "eval_s": r["seconds"],
        }
        for name, m in metrics_by_name.items()
        for s, r in evaluations(m["eval"])
    ]
    return markdown_table(rows, COLUMNS, HEADERS, FORMATS)


def selective_table(metrics_by_name: dict[str, dict[str, Any]]) -> str:
    """Markdown table of AURC and accuracy at 50/80/90% coverage, per method x S."""
    rows = [
        {"model": name, "S": s, **{k: r.get(k, float("nan")) for k in SELECTIVE}}
        for name, m in metrics_by_name.items()
        for s, r in evaluations(m["eval"])
    ]
    headers = {"model": "method", "S": "S", "aurc": "AURC", **{k: f"ACC@{k[7:]}%" for k in SELECTIVE[1:]}}
    return markdown_table(rows, ["model", "S", *SELECTIVE], headers, dict.fromkeys(SELECTIVE, "{:.3f}"))


def decisions_table(scored: dict[str, Any]) -> str:
    """The decision rules of one run on its test split (``metrics["decisions"]``): each conformal
    set's target and empirical coverage and mean set size; the selective rule's coverage and risk."""
    rows = [
        {
            "rule": f"conformal set, {score.upper()}",
            "guarantee": f"coverage >= {1 - scored[score]['alpha']:.2f}",
            "coverage": scored[score]["coverage"],
            "size": scored[score]["mean_set_size"],
        }
        for score in ("lac", "aps")
        if score in scored
    ]
    sel = scored["selective"]
    rows.append(
        {
            "rule": "selective answering",
            "guarantee": f"risk <= {sel['target_risk']:.2f} w.p. >= {1 - sel['delta']:.2f}",
            "coverage": sel["coverage"],
            "risk": sel["risk"],
        }
    )
    headers = {
        "coverage": f"coverage ({scored['split']})",
        "size": "mean set size",
        "risk": "risk (error | answered)",
    }
    formats = {"coverage": "{:.3f}", "size": "{:.2f}", "risk": "{:.3f}"}
    return markdown_table(rows, ["rule", "guarantee", "coverage", "size", "risk"], headers, formats)


def generation_scores_table(metrics_by_name: dict[str, dict[str, Any]]) -> str:
    """Accuracy of each run's generated answers, and the AUROC / PRR of every uncertainty score it has."""
    names = list(metrics_by_name)
    scores = list(dict.fromkeys(k for m in metrics_by_name.values() for k in m["generation"]["scores"]))
    rows: list[dict] = [
        {
            "score": "accuracy (EM)",
            **{n: f"{m['generation']['accuracy']:.3f}" for n, m in metrics_by_name.items()},
        }
    ]
    for score in scores:
        row: dict[str, Any] = {"score": f"{score}: AUROC / PRR"}
        for n, m in metrics_by_name.items():
            q = m["generation"]["scores"].get(score)
            row[n] = f"{q['auroc']:.3f} / {q['prr']:.3f}" if q else ""
        rows.append(row)
    return markdown_table(rows, ["score", *names])


def run_table(name: str, metrics: dict[str, Any]) -> str:
    """The table a command prints for one run: its answers' scores on an open QA task, else every
    number of samples' accuracy and calibration."""
    table = generation_scores_table if "generation" in metrics else comparison_table
    return table({name: metrics})


def ood_section(metrics_by_name: dict[str, dict[str, Any]]) -> list[str]:
    """Report lines for the shifted tasks (empty when there are none)."""
    rows = [
        {"model": name, "task": task, "S": s, **r, "ece": 100 * r["ece"]}
        for name, m in metrics_by_name.items()
        for task, per_s in m.get("ood", {}).items()
        for s, r in evaluations(per_s)
    ]
    if not rows:
        return []
    cols = ["model", "task", "S", "acc", "ece", "nll", "auroc_max_prob", "auroc_entropy"]
    headers = {"model": "method", "task": "shifted task", "acc": "ACC", "ece": "ECE (%)", "nll": "NLL",
               "auroc_max_prob": "AUROC (max prob)", "auroc_entropy": "AUROC (entropy)"}  # fmt: skip
    fmt = {
        "acc": "{:.3f}",
        "ece": "{:.1f}",
        "nll": "{:.3f}",
        "auroc_max_prob": "{:.3f}",
        "auroc_entropy": "{:.3f}",
    }
    return [
        "## Distribution shift",
        "",
        "Metrics on the shifted tasks' test splits, and the AUROC of telling this task's test questions "
        "(in-distribution) from the shifted ones by max probability and by predictive entropy (0.5 = chance).",
        "",
        markdown_table(rows, cols, headers, fmt),
        "",
    ]


# ---- a grid: methods x tasks x seeds -----------------------------------------------------------
# metric key -> (header, scale, format); ECE in percent as in the papers
METRICS: dict[str, tuple[str, float, str]] = {
    "acc": ("ACC", 1.0, "{:.3f}"),
    "ece": ("ECE (%)", 100.0, "{:.1f}"),
    "nll": ("NLL", 1.0, "{:.3f}"),
    "brier": ("Brier", 1.0, "{:.3f}"),
    "aurc": ("AURC", 1.0, "{:.3f}"),
    "acc_cov50": ("ACC at 50% coverage", 1.0, "{:.3f}"),
    "acc_cov80": ("ACC at 80% coverage", 1.0, "{:.3f}"),
    "acc_cov90": ("ACC at 90% coverage", 1.0, "{:.3f}"),
    "auroc_max_prob": ("OOD AUROC (max prob)", 1.0, "{:.3f}"),
    "auroc_entropy": ("OOD AUROC (entropy)", 1.0, "{:.3f}"),
}
# metrics that exist only for a shifted task (no in-distribution column)
OOD_ONLY = ("auroc_max_prob", "auroc_entropy")
# metrics where a larger value is better (for the rest, ECE, NLL, Brier and AURC, smaller is)
HIGHER_BETTER = ("acc", "acc_cov50", "acc_cov80", "acc_cov90", *OOD_ONLY)
# the metrics of the paired tables (each method against the reference method, seed by seed): all
PAIRED = tuple(METRICS)


class Grid(Protocol):
    """What the grid tables read of a bench config."""

    tasks: list[str]
    methods: dict[str, Any]
    ood: dict[str, list[str]]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def seed_values(grid: Grid, results: dict[str, Any], label: str, metric: str) -> dict[str, dict[int, float]]:
    """A method's value of ``metric`` (in table units) per column and seed: the in-distribution tasks
    (not for the OOD AUROCs) and then every ``task→shifted`` column."""
    scale = METRICS[metric][1]
    per_task = results.get(label, {})
    out: dict[str, dict[int, float]] = {}
    if metric not in OOD_ONLY:
        for task in grid.tasks:
            runs = per_task.get(task, {})
            vals = {seed: entry(m["eval"], headline(m)).get(metric) for seed, m in runs.items()}
            out[task] = {seed: scale * v for seed, v in vals.items() if v is not None}
    for task in grid.tasks:
        runs = per_task.get(task, {})
        for shifted in grid.ood.get(task, []):
            vals = {
                seed: entry(m.get("ood", {}).get(shifted, {}), headline(m)).get(metric)
                for seed, m in runs.items()
            }
            out[f"{task}→{shifted}"] = {seed: scale * v for seed, v in vals.items() if v is not None}
    return out


def table_rows(grid: Grid, results: dict[str, Any], metric: str) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of one metric's table: cells are (mean, std, n seeds) or None."""
    columns: list[str] = []
    rows = []
    for label in grid.methods:
        per_column = seed_values(grid, results, label, metric)
        columns = list(per_column)
        row: list[Any] = [label]
        for vals in per_column.values():
            v = list(vals.values())
            row.append((*mean_std(v), len(v)) if v else None)
        rows.append(row)
    return columns, rows


def paired_rows(
    grid: Grid, results: dict[str, Any], metric: str, reference: str
) -> tuple[list[str], list[list[Any]]]:
    """Each method against ``reference``, paired by seed: cells are (mean difference, its sample std,
    n seeds both ran, seeds where the method is better) or None. Better: higher for the accuracies
    and the AUROCs, lower for the rest (:data:`HIGHER_BETTER`)."""
    higher_better = metric in HIGHER_BETTER
    ref = seed_values(grid, results, reference, metric)
    rows = []
    for label in grid.methods:
        if label == reference:
            continue
        row: list[Any] = [label]
        for column, vals in seed_values(grid, results, label, metric).items():
            seeds = sorted(set(vals) & set(ref.get(column, {})))
            diffs = [vals[s] - ref[column][s] for s in seeds]
            wins = sum(d > 0 if higher_better else d < 0 for d in diffs)
            row.append((*mean_std(diffs), len(diffs), wins) if diffs else None)
        rows.append(row)
    return list(ref), rows


def _grid_markdown(columns: Sequence[str], rows: list[list[Any]], cell_text: Callable[[Any], str]) -> str:
    table = [{"method": r[0], **{c: cell_text(x) for c, x in zip(columns, r[1:], strict=True)}} for r in rows]
    return markdown_table(table, ["method", *columns]).rstrip("\n")


def _cell_text(cell: Any, fmt: str, sep: str) -> str:
    if cell is None:
        return "-"
    mean, std, n = cell
    return fmt.format(mean) + (f"{sep}{fmt.format(std)}" if n > 1 else "")


def to_markdown(metric: str, columns: list[str], rows: list[list[Any]]) -> str:
    fmt = METRICS[metric][2]
    return _grid_markdown(columns, rows, lambda c: _cell_text(c, fmt, " ± "))


def paired_markdown(metric: str, columns: list[str], rows: list[list[Any]]) -> str:
    """A paired table: ``+1.2 ± 0.8 (2/3)`` = mean difference ± std, better on 2 of 3 seeds."""
    fmt = METRICS[metric][2].replace("{:", "{:+")

    def text(cell: Any) -> str:
        if cell is None:
            return "-"
        mean, std, n, wins = cell
        return fmt.format(mean) + (f" ± {METRICS[metric][2].format(std)}" if n > 1 else "") + f" ({wins}/{n})"

    return _grid_markdown(columns, rows, text)


def to_csv(metric: str, columns: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", *[f"{c} {part}" for c in columns for part in ("mean", "std")], "seeds"])
    for r in rows:
        cells = [x for c in r[1:] for x in ((c[0], c[1]) if c else ("", ""))]
        seeds = max((c[2] for c in r[1:] if c), default=0)
        writer.writerow([r[0], *cells, seeds])
    return buf.getvalue()


def to_latex(metric: str, columns: list[str], rows: list[list[Any]]) -> str:
    fmt = METRICS[metric][2]

    def esc(text: str) -> str:
        return text.replace("_", r"\_").replace("%", r"\%").replace("→", r"$\to$")

    lines = [
        r"\begin{tabular}{l" + "c" * len(columns) + "}",
        r"\toprule",
        "method & " + " & ".join(esc(c) for c in columns) + r" \\",
        r"\midrule",
    ]
    lines += [
        esc(r[0]) + " & " + " & ".join(_cell_text(c, fmt, r" $\pm$ ") for c in r[1:]) + r" \\" for r in rows
    ]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
