"""The plots: reliability diagrams, risk-coverage curves, training curves and the posterior per module.

Plots are drawn on a bare ``Figure`` with the Agg canvas rather than through ``pyplot``, so they need no
display, leave the global matplotlib backend alone and keep no figure alive after saving.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from scalabl.io import atomic_path
from scalabl.metrics import expected_calibration_error, reliability_bins, risk_coverage
from scalabl.rejection import prediction_rejection_ratio, rejection_curve

__all__ = [
    "plot_active_curves",
    "plot_posterior_modules",
    "plot_reliability",
    "plot_risk_coverage",
    "plot_training_curves",
]


def _save_png(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        # The temp file ends in .tmp, so the format cannot be inferred from the name.
        fig.savefig(tmp, format="png", dpi=120)


def plot_reliability(
    curves: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    path: str | os.PathLike,
    n_bins: int = 15,
    title: str | None = None,
) -> None:
    """Save a PNG reliability diagram with one column of panels per named model.

    ``curves`` maps a model name to ``(probs [N, C], labels [N])``. Each column shows the per-bin accuracy
    as bars against the diagonal of perfect calibration, the gap to the mean confidence of each bin shaded,
    the ECE in the title, and below it a histogram of the top-label confidences (counts per bin).
    """
    if not curves:
        raise ValueError("plot_reliability needs at least one curve")
    fig = Figure(figsize=(3.6 * len(curves), 4.8), layout="constrained")
    axes = fig.subplots(2, len(curves), squeeze=False, sharex=True, height_ratios=[3, 1])
    for col, (name, (probs, labels)) in enumerate(curves.items()):
        bins = reliability_bins(probs, labels, n_bins)
        ece = expected_calibration_error(probs, labels, n_bins)
        lower, width = bins["bin_lower"], 1.0 / n_bins
        filled = bins["count"] > 0
        acc, conf = bins["accuracy"][filled], bins["confidence"][filled]

        ax = axes[0, col]
        ax.bar(
            lower[filled],
            acc,
            width=width,
            align="edge",
            color="tab:blue",
            edgecolor="black",
            label="accuracy",
        )
        ax.bar(
            lower[filled],
            np.abs(conf - acc),
            bottom=np.minimum(conf, acc),
            width=width,
            align="edge",
            color="tab:red",
            alpha=0.3,
            hatch="//",
            edgecolor="tab:red",
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{name}\nECE = {ece:.4f}")
        if col == 0:
            ax.set_ylabel("accuracy")
            ax.legend(loc="upper left", fontsize="small")

        hist = axes[1, col]
        hist.bar(lower, bins["count"], width=width, align="edge", color="gray", edgecolor="black")
        hist.set_xlabel("confidence")
        if col == 0:
            hist.set_ylabel("count")
    if title:
        fig.suptitle(title)
    _save_png(fig, path)


def plot_risk_coverage(
    curves: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    path: str | os.PathLike,
    title: str | None = None,
) -> None:
    """Save a PNG of risk (error rate) against coverage when only the most confident answers are kept.

    ``curves`` maps a name to ``(probs [N, C], labels [N])``; the legend gives each curve's AURC.
    """
    if not curves:
        raise ValueError("plot_risk_coverage needs at least one curve")
    fig = Figure(figsize=(5.2, 4.0), layout="constrained")
    ax = fig.subplots()
    for name, (probs, labels) in curves.items():
        coverage, risk = risk_coverage(probs, labels)
        ax.plot(coverage, risk, label=f"{name} (AURC {risk.mean():.3f})")
    ax.set_xlabel("coverage (fraction of answers kept, most confident first)")
    ax.set_ylabel("risk (error rate among kept)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    _save_png(fig, path)


def plot_training_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike,
    keys: Sequence[str] = ("loss",),
) -> None:
    """Save a PNG with one panel per metric in ``keys``, plotting the metric against ``"step"`` for each run.

    ``histories`` maps a run name to its logged records (dicts with a ``"step"`` field and float metrics).
    Records lacking a key are skipped for that key, so metrics logged at different intervals mix freely;
    keys found in no run get no panel. Raises ValueError if none of ``keys`` occurs in any run.
    """
    series = {
        key: {
            run: ([r["step"] for r in recs if key in r], [r[key] for r in recs if key in r])
            for run, recs in histories.items()
            if any(key in r for r in recs)
        }
        for key in keys
    }
    series = {key: runs for key, runs in series.items() if runs}
    if not series:
        raise ValueError(f"none of the keys {list(keys)} occurs in any run history")
    fig = Figure(figsize=(4.5 * len(series), 3.6), layout="constrained")
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    for ax, (key, runs) in zip(axes, series.items(), strict=True):
        for run, (steps, values) in runs.items():
            ax.plot(steps, values, label=run)
        ax.set(xlabel="step", ylabel=key, title=key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    _save_png(fig, path)


def module_label(name: str) -> tuple[int | None, str]:
    """(layer index, module kind) of an adapted module's name, e.g.
    ``...layers.3.self_attn.q_proj.lora_A.default`` -> ``(3, "q_proj")``; ``lm_head`` -> ``(None, "lm_head")``."""
    layer = re.search(r"\.(?:layers|h|blocks)\.(\d+)\.", name)
    parts = name.split(".")
    kind = parts[parts.index("lora_A") - 1] if "lora_A" in parts and parts.index("lora_A") > 0 else parts[-1]
    return (int(layer.group(1)) if layer else None), kind


def plot_posterior_modules(history: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Save a PNG of every adapted module's posterior during training (the ``"modules"`` entries of
    the history): sigma/mu against step, one line per module coloured by depth; and the last log's
    sigma and mu against layer index, one marker per module kind. Raises ValueError without them."""
    records = [r for r in history if r.get("modules")]
    if not records:
        raise ValueError("no per-module posterior statistics in the history (not a variational method?)")
    names = list(records[-1]["modules"])
    labels = {n: module_label(n) for n in names}
    depth = max((layer for layer, _ in labels.values() if layer is not None), default=0) or 1
    kinds = sorted({kind for _, kind in labels.values()})
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "v", "D", "x", "+", "*"]
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    cmap = matplotlib.colormaps["viridis"]
    for n in names:
        layer, kind = labels[n]
        steps = [r["step"] for r in records if n in r["modules"]]
        ratio = [r["modules"][n]["sigma_over_mu"] for r in records if n in r["modules"]]
        colour = cmap(layer / depth) if layer is not None else "black"
        left.plot(steps, ratio, styles[kinds.index(kind) % len(styles)], color=colour, lw=0.8, alpha=0.8)
    left.set(xlabel="step", ylabel="mean sigma/mu", title="per module (colour: depth; line: kind)")
    left.grid(alpha=0.3)
    last = records[-1]["modules"]
    for i, kind in enumerate(kinds):
        mine = [n for n in names if labels[n][1] == kind]
        xs = [labels[n][0] if labels[n][0] is not None else depth + 1 for n in mine]
        m = markers[i % len(markers)]
        right.scatter(
            xs, [last[n]["sigma"] for n in mine], marker=m, s=14, color="tab:red", label=f"{kind} sigma"
        )
        right.scatter(xs, [last[n]["mu"] for n in mine], marker=m, s=14, color="tab:blue", label=f"{kind} mu")
    right.set(
        xlabel="layer", ylabel="mean over the r dimensions", title=f"step {records[-1]['step']}", yscale="log"
    )
    right.grid(alpha=0.3)
    right.legend(fontsize="small", ncols=2)
    _save_png(fig, path)


def plot_rejection_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    title: str | None = None,
) -> None:
    """Save a PNG of the accuracy-rejection curve of each uncertainty score: the accuracy of the
    answers kept when the most uncertain are rejected first. ``curves`` maps a score's name to
    ``(uncertainty [N], correct [N])``; the legend gives each curve's PRR, the oracle and random
    rejection are drawn for reference."""
    if not curves:
        raise ValueError("plot_rejection_curves needs at least one curve")
    fig = Figure(figsize=(5.6, 4.2), layout="constrained")
    ax = fig.subplots()
    quality = next(iter(curves.values()))[1].astype(np.float64)
    x, oracle = rejection_curve(-quality, quality)
    ax.plot(x, oracle, color="0.5", linestyle=":", label="oracle")
    ax.axhline(quality.mean(), color="0.5", linestyle="--", label="random")
    for name, (uncertainty, correct) in curves.items():
        x, kept = rejection_curve(uncertainty, correct.astype(np.float64))
        prr = prediction_rejection_ratio(uncertainty, correct.astype(np.float64))
        ax.plot(x, kept, label=f"{name} (PRR {prr:.2f})")
    ax.set_xlabel("fraction rejected (most uncertain first)")
    ax.set_ylabel("accuracy of the answers kept")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    _save_png(fig, path)


def plot_active_curves(
    curves: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike, title: str | None = None
) -> None:
    """Test accuracy and NLL against the number of labels, one line per named active-learning run
    (its round records: ``n_labels`` and ``metrics``); a band of +-1 std where a name has several
    runs (``curves[name]`` a list of record lists, e.g. seeds)."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for name, runs in curves.items():
        runs = [runs] if runs and isinstance(runs[0], Mapping) else list(runs)
        labels = [rec["n_labels"] for rec in runs[0]]
        for ax, key in zip(axes, ("acc", "nll"), strict=True):
            values = np.array([[rec["metrics"][key] for rec in run] for run in runs])
            mean = values.mean(0)
            (line,) = ax.plot(labels, mean, marker="o", label=name)
            if len(runs) > 1:
                std = values.std(0)
                ax.fill_between(labels, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    for ax, ylabel in zip(axes, ("test accuracy", "test NLL"), strict=True):
        ax.set_xlabel("labelled questions")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save_png(fig, path)
