"""Tables: the one markdown builder, the per-run tables and the grid tables (mean ± std, paired)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scalabl.bench import BenchConfig
from scalabl.tables import (
    comparison_table,
    markdown_table,
    ood_section,
    paired_markdown,
    paired_rows,
    selective_table,
)


def test_markdown_table_shape_and_formatting():
    rows = [
        {"method": "lora", "acc": 0.812345, "ece": 0.123456, "n": 100},
        {"method": "scalabl", "acc": np.float32(0.5), "ece": 0.05, "n": 7, "extra": "ignored"},
    ]
    text = markdown_table(
        rows, ["method", "acc", "ece", "n"], headers={"ece": "ECE"}, floatfmt={"acc": "{:.1%}"}
    )
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows)  # header, separator, one line per row
    assert all(line.startswith("|") and line.endswith("|") and line.count("|") == 5 for line in lines)
    assert lines[0] == "| method | acc | ECE | n |"
    assert set(lines[1].replace("|", "").split()) == {"---"}
    assert lines[2] == "| lora | 81.2% | 0.1235 | 100 |"  # default float format is {:.4f}
    assert lines[3] == "| scalabl | 50.0% | 0.0500 | 7 |"
    assert text.endswith("\n")


def test_markdown_table_missing_values_and_pipes():
    text = markdown_table([{"a": "x|y", "b": None}, {"a": True}], ["a", "b"])
    lines = text.splitlines()
    assert lines[2] == "| x\\|y |  |"
    assert lines[3] == "| True |  |"  # bools are not formatted as floats


def test_markdown_table_no_rows():
    assert markdown_table([], ["a"]).splitlines() == ["| a |", "| --- |"]


def _metrics(acc: float, ece: float, ood_ece: float | None = None) -> dict:
    out = {"eval": {"S=4": {"acc": acc, "ece": ece, "n_samples": 4}}}
    if ood_ece is not None:
        out["ood"] = {"arc_c": {"S=4": {"ece": ood_ece, "auroc_max_prob": 1.0 - ood_ece, "n_samples": 4}}}
    return out


def test_paired_tables_difference_each_seed_against_the_reference():
    config = BenchConfig(
        tasks=["arc_easy", "obqa"],
        seeds=[0, 1, 2],
        methods={"mle": {}, "scalabl": {}},
        ood={"obqa": ["arc_c"]},
        reference="mle",
    )
    results = {
        "mle": {
            "arc_easy": {0: _metrics(0.50, 0.30), 1: _metrics(0.60, 0.20), 2: _metrics(0.70, 0.10)},
            "obqa": {0: _metrics(0.40, 0.40, 0.50)},
        },
        "scalabl": {
            "arc_easy": {0: _metrics(0.55, 0.20), 1: _metrics(0.60, 0.25), 2: _metrics(0.60, 0.05)},
            "obqa": {0: _metrics(0.40, 0.40, 0.45), 1: _metrics(0.9, 0.9, 0.9)},  # seed 1: no mle pair
        },
    }
    columns, rows = paired_rows(config, results, "ece", "mle")
    assert columns == ["arc_easy", "obqa", "obqa→arc_c"] and [r[0] for r in rows] == ["scalabl"]
    mean, std, n, wins = rows[0][1]
    diffs = [-10.0, 5.0, -5.0]  # ECE in percent, scalabl minus mle per seed
    assert mean == pytest.approx(sum(diffs) / 3)
    assert std == pytest.approx(math.sqrt(sum((d - sum(diffs) / 3) ** 2 for d in diffs) / 2))
    assert (n, wins) == (3, 2)  # lower ECE is better: seeds 0 and 2
    assert rows[0][2] == pytest.approx((0.0, 0.0, 1, 0))  # a tie is not a win; unpaired seed 1 left out
    assert rows[0][3] == pytest.approx((-5.0, 0.0, 1, 1))
    _, acc_rows = paired_rows(config, results, "acc", "mle")
    assert acc_rows[0][1][3] == 1  # higher ACC is better: seed 0 only
    for seed_metrics in (*results["mle"]["arc_easy"].values(), *results["scalabl"]["arc_easy"].values()):
        seed_metrics["eval"]["S=4"]["acc_cov50"] = seed_metrics["eval"]["S=4"]["acc"]
    _, cov_rows = paired_rows(config, results, "acc_cov50", "mle")
    assert cov_rows[0][1][3] == 1  # selective accuracy: higher is better too
    auroc_columns, auroc_rows = paired_rows(config, results, "auroc_max_prob", "mle")
    assert auroc_columns == ["obqa→arc_c"]  # an OOD AUROC has only shifted columns
    assert auroc_rows[0][1] == pytest.approx((0.05, 0.0, 1, 1))  # higher AUROC is better
    text = paired_markdown("ece", columns, rows)
    assert "| scalabl | -3.3 ± 7.6 (2/3) | +0.0 (0/1) | -5.0 (1/1) |" in text
    with pytest.raises(ValueError, match="reference"):
        BenchConfig(tasks=["arc_easy"], methods={"mle": {}}, reference="scalabl")


def _run_metrics() -> dict:
    entry = {"acc": 0.5, "ece": 0.125, "nll": 1.2345, "brier": 0.6, "mi": 0.01, "seconds": 3.0}
    selective = {"aurc": 0.2, "acc_cov50": 0.7, "acc_cov80": 0.6, "acc_cov90": 0.55}
    return {
        "extra_parameters": 64,
        "train_seconds": 10.0,
        "post_fit_seconds": 2.0,
        "eval": {
            "S=4": {**entry, **selective, "n_samples": 4},
            "S=0": {**entry, **selective, "n_samples": 0},
        },
        "ood": {
            "arc_c": {
                "n_test": 5,
                "S=4": {**entry, "auroc_max_prob": 0.6, "auroc_entropy": 0.65, "n_samples": 4},
            }
        },
    }


def test_run_tables_read_the_sample_count_of_each_entry():
    m = _run_metrics()
    lines = comparison_table({"scalabl": m}).splitlines()
    assert lines[0].startswith("| method | S | ACC | ECE (%) |")
    assert lines[2] == "| scalabl | 4 | 0.500 | 12.5 | 1.234 | 0.600 | 0.0100 | 64 | 12 | 3 |"
    assert lines[3].startswith("| scalabl | 0 |")
    assert (
        selective_table({"scalabl": m}).splitlines()[2] == "| scalabl | 4 | 0.200 | 0.700 | 0.600 | 0.550 |"
    )
    ood = ood_section({"scalabl": m})
    assert ood[0] == "## Distribution shift"
    assert ood[4].splitlines()[2] == "| scalabl | arc_c | 4 | 0.500 | 12.5 | 1.234 | 0.600 | 0.650 |"
    assert ood_section({"scalabl": {**m, "ood": {}}}) == []
