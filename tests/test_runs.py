"""Runs: RunConfig (de)serialisation and validation, train_run -> run folder -> load_run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model
from safetensors.torch import load_file

from scalabl.config import RunConfig, TrainConfig
from scalabl.methods import MethodConfig
from scalabl.run_folder import RUN_FILES, RunFolder
from scalabl.runs import load_run, train_run
from scalabl.tables import comparison_table


# ---- a run, in Python ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[RunConfig, Path, dict]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        model_dir = save_tiny_model(tmp_path_factory.mktemp("tiny-model"))
        out = tmp_path_factory.mktemp("runs") / "scalabl-run"
        config = RunConfig(
            model=str(model_dir),
            task="arc_easy",
            max_train=6,
            max_test=4,
            n_samples=(2, 0),
            method=MethodConfig(method="scalabl", rank=2),
            train=TrainConfig(steps=2, batch_size=3, lr=1e-2, log_every=1),
        )
        metrics = train_run(config, out, progress=False)
    return config, out, metrics


def test_train_run_writes_the_run_folder(run_dir):
    config, out, metrics = run_dir
    assert {p.name for p in out.iterdir()} >= set(RUN_FILES) | {"posterior_modules.png"}  # a scalabl run
    assert "posterior_modules.png" in (out / "report.md").read_text()
    assert not list(out.glob(".*"))  # no temp or write-test files left behind

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert set(metrics["eval"]) == {"S=2", "S=0"}
    assert metrics["n_test"] == 4 and metrics["n_train"] == 6
    assert metrics["extra_parameters"] == 2 * 2 * 4  # 2r x (q_proj, v_proj) x 2 layers
    for r in metrics["eval"].values():
        assert 0 <= r["acc"] <= 1 and 0 <= r["ece"] <= 1 and r["nll"] >= 0 and 0 <= r["brier"] <= 2

    saved = json.loads((out / "config.json").read_text())
    assert "scalabl_version" in saved
    saved.pop("scalabl_version")
    assert RunConfig.from_dict(saved) == config

    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2]
    assert "sigma" in history[-1]
    assert metrics["final_train_nll"] == pytest.approx(history[-1]["nll"])

    preds = load_file(str(out / "predictions.safetensors"))
    assert set(preds) == {"labels", "log_probs_S2", "log_probs_S0"}
    assert preds["labels"].shape == (4,)
    assert preds["log_probs_S0"].dtype == torch.float64

    report = (out / "report.md").read_text()
    assert "reliability.png" in report and "training.png" in report and "sigma" in report


def test_load_run_reproduces_the_saved_predictions(run_dir):
    config, out, _ = run_dir
    loaded_config, blora = load_run(out)
    assert loaded_config == config
    test = config.splits().test[: config.max_test]
    preds = load_file(str(out / "predictions.safetensors"))
    for s in config.n_samples:
        log_probs = blora.predict_log_proba(
            test, s, batch_size=config.eval_batch_size, seed=config.train.seed, batch_samples=True
        )
        torch.testing.assert_close(log_probs, preds[f"log_probs_S{s}"], rtol=0, atol=1e-12)


def test_comparison_table(run_dir):
    _, _, metrics = run_dir
    table = comparison_table({"scalabl": metrics, "other": metrics})
    lines = table.splitlines()
    assert len(lines) == 2 + 4  # header, separator, 2 methods x 2 sample counts
    assert "ECE (%)" in lines[0]
    assert sum("scalabl" in line for line in lines) == 2


def test_load_run_needs_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_run(tmp_path)


def test_full_disk_or_unwritable_output_fails_before_training(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from scalabl import run_folder

    model_dir = save_tiny_model(tmp_path / "tiny")
    config = RunConfig(
        model=str(model_dir), max_train=4, max_test=2, train=TrainConfig(steps=2, batch_size=2)
    )
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(run_folder.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError, match=r"MB free on its disk, the run needs about"):
        train_run(config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "history.jsonl").exists()  # nothing trained
    monkeypatch.setattr(run_folder.shutil, "disk_usage", shutil.disk_usage)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="is not writable"):
        train_run(config, blocker / "out", progress=False)


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny")
    config = RunConfig(
        model=str(model_dir),
        max_train=6,
        max_test=4,
        n_samples=(2, 0),
        method=MethodConfig(method="scalabl", rank=2),
        train=TrainConfig(steps=3, batch_size=2),
    )
    first = train_run(config, tmp_path / "a", progress=False)
    second = train_run(config, tmp_path / "b", progress=False)
    for key in first["eval"]:
        a = {k: v for k, v in first["eval"][key].items() if k != "seconds"}
        b = {k: v for k, v in second["eval"][key].items() if k != "seconds"}
        assert a == b
    la, lb = (load_file(str(tmp_path / d / "predictions.safetensors")) for d in ("a", "b"))
    assert all(torch.equal(la[k], lb[k]) for k in la)


def test_eval_split_validation_scores_the_validation_questions(tmp_path):
    """Settings are chosen on validation: the run scores the validation split, and says so."""
    from scalabl.choices import EvalSplit

    model_dir = save_tiny_model(tmp_path / "tiny")
    config = RunConfig(
        model=str(model_dir),
        max_train=6,
        n_validation=5,
        eval_split=EvalSplit.VALIDATION,
        n_samples=(0,),
        method=MethodConfig(method="mle", rank=2),
        train=TrainConfig(steps=1, batch_size=2),
    )
    metrics = train_run(config, tmp_path / "run", progress=False)
    assert metrics["n_test"] == 5 and metrics["eval_split"] == "validation"
    labels = load_file(str(tmp_path / "run" / "predictions.safetensors"))["labels"]
    assert labels.tolist() == [e.label for e in config.splits().validation]
    assert "validation n = 5" in (tmp_path / "run" / "report.md").read_text()


def test_a_run_logs_its_validation_curve(run_dir):
    """By default 32 validation questions are scored four times over the run (steps 2: at 1 and 2)."""
    _, out, _ = run_dir
    history = RunFolder(out).history()
    assert [h["step"] for h in history if "val_nll" in h] == [1, 2]
    assert all(h["val_nll"] > 0 and 0 <= h["val_acc"] <= 1 for h in history if "val_nll" in h)
