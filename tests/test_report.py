"""A run's report: report.md with its tables and plots, from the run folder alone."""

from __future__ import annotations

import json

import torch

from scalabl.report import posterior_summary, write_run_report
from scalabl.run_folder import RunFolder


def test_the_report_is_written_from_the_folder(tmp_path):
    folder = RunFolder(tmp_path)
    entry = {"acc": 0.5, "ece": 0.1, "nll": 1.0, "brier": 0.6, "mi": 0.0, "seconds": 1.0}
    selective = {"aurc": 0.3, "acc_cov50": 0.6, "acc_cov80": 0.55, "acc_cov90": 0.5}
    metrics = {
        "method": "scalabl",
        "task": "arc_easy",
        "model": "tiny",
        "n_train": 8,
        "n_test": 6,
        "train_steps": 2,
        "lora_parameters": 100,
        "extra_parameters": 16,
        "fitted": {"temperature": 1.5, "search": [1, 2]},
        "eval": {
            "S=2": {**entry, **selective, "n_samples": 2},
            "S=0": {**entry, **selective, "n_samples": 0},
        },
        "ood": {},
    }
    folder.write_metrics(metrics)
    lp = torch.log_softmax(torch.randn(6, 3, dtype=torch.float64), dim=-1)
    folder.write_predictions(
        {"labels": torch.tensor([0, 1, 2, 0, 1, 2]), "log_probs_S2": lp, "log_probs_S0": lp.clone()}
    )
    history = [{"step": 2, "nll": 1.0, "sigma": 0.4, "mu": 0.8, "sigma_over_mu": 0.5, "modules": {}}]
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    write_run_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# scalabl on arc_easy")
    assert "| scalabl | 2 | 0.500 | 10.0 |" in report and "| scalabl | 0 |" in report
    assert "Fitted post hoc: temperature = 1.5." in report
    assert posterior_summary(history) in report
    for png in ("reliability.png", "selective.png", "training.png"):
        assert (tmp_path / png).is_file()
    assert posterior_summary([{"step": 1, "nll": 2.0}]) is None
