"""scalabl calibrate-decisions on a real (tiny) run: the rules are fitted on held-out validation
questions, saved, scored on the test predictions, reported, kept by evaluate, dropped by retraining."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from conftest import trained_tiny_run

from scalabl.cli import main
from scalabl.config import MethodConfig
from scalabl.config.decisions import DecisionConfig
from scalabl.run_decisions import calibration_examples, fit_run_decisions
from scalabl.run_folder import RunFolder
from scalabl.runs import evaluate_run, load_run, train_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return trained_tiny_run(
        tmp_path_factory,
        MethodConfig(method="scalabl", rank=2, temperature=True),
        max_test=12,
        n_validation=40,
        max_validation=10,
        n_samples=(2,),
    )


def test_the_rules_are_fitted_saved_scored_and_reported(tiny_run, capsys):
    config, out = tiny_run
    assert main(["calibrate-decisions", str(out), "--alpha", "0.2", "--delta", "0.2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "conformal set, LAC" in printed and "selective answering" in printed

    saved = json.loads((out / "decisions.json").read_text())
    assert [c["score"] for c in saved["conformal"]] == ["lac", "aps"]
    assert all(c["alpha"] == 0.2 and c["n_calibration"] == 30 for c in saved["conformal"])
    # the temperature read the first 10 validation questions: the 30 after them calibrate
    assert saved["calibration"]["n"] == 30 and "after the 10" in saved["calibration"]["examples"]
    assert saved["calibration"]["n_samples"] == 2 and saved["selective"]["target_risk"] == 0.2

    metrics = RunFolder(out).read_metrics()
    scored = metrics["decisions"]
    assert scored["split"] == "test" and scored["key"] == "log_probs_S2"
    for score in ("lac", "aps"):
        assert 0.0 <= scored[score]["coverage"] <= 1.0 and 0.0 <= scored[score]["mean_set_size"] <= 4.0
    assert 0.0 <= scored["selective"]["coverage"] <= 1.0
    assert "## Decisions with guarantees" in (out / "report.md").read_text()

    # re-evaluating keeps the rules and scores them on the new predictions
    again = evaluate_run(out, progress=False)
    assert again["decisions"]["lac"] == scored["lac"]


def test_calibration_examples_are_the_whole_validation_split_without_a_post_hoc_fit(tiny_run):
    config, out = tiny_run
    _, blora = load_run(out)
    examples, note = calibration_examples(config, blora)
    assert len(examples) == 30
    plain = replace(config, method=replace(config.method, temperature=False))
    blora.config = plain.method
    examples, note = calibration_examples(plain, blora)
    assert len(examples) == 40 and "all 40" in note


def test_bad_options_and_a_validation_evaluated_run_are_refused(tiny_run, tmp_path, capsys):
    config, out = tiny_run
    assert main(["calibrate-decisions", str(out), "--alpha", "1.5"]) == 2
    assert "alpha: must be in (0, 1)" in capsys.readouterr().err
    assert main(["calibrate-decisions", str(tmp_path / "nothing")]) == 2
    _, blora = load_run(out)
    on_validation = replace(config, eval_split="validation", method=replace(config.method, temperature=False))
    with pytest.raises(ValueError, match="evaluated on its validation split"):
        fit_run_decisions(RunFolder(out), on_validation, blora, DecisionConfig())


def test_retraining_drops_the_rules_of_the_earlier_adapter(tiny_run):
    config, out = tiny_run
    if not (out / "decisions.json").exists():
        RunFolder(out).write_decisions({"stale": True})
    train_run(config, out, progress=False, overwrite=True)
    assert not (out / "decisions.json").exists()
    assert "decisions" not in RunFolder(out).read_metrics()
