"""A run folder: its files round-trip, and a new run refuses a folder that holds anything."""

from __future__ import annotations

import pytest
import torch

from scalabl.config import RunConfig, TrainConfig
from scalabl.io import FolderInUse
from scalabl.run_folder import RunFolder


def test_config_metrics_history_and_predictions_round_trip(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    config = RunConfig(task="obqa", train=TrainConfig(steps=3))
    folder.write_config(config)
    assert folder.read_config() == config
    assert folder.read_metrics() == {}
    folder.write_metrics({"method": "mle"})
    assert folder.read_metrics() == {"method": "mle"}
    assert folder.history() == []
    folder.append_history({"step": 1})
    folder.append_history({"step": 2})
    assert [r["step"] for r in folder.history()] == [1, 2]
    folder.write_history([{"step": 5}])
    assert folder.history() == [{"step": 5}]
    folder.clear_history()
    assert folder.history() == []
    log_probs = torch.log_softmax(torch.randn(3, 4, dtype=torch.float64), dim=-1)
    folder.write_predictions({"labels": torch.tensor([0, 1, 2]), "log_probs_S4": log_probs})
    probs, labels = folder.predictions(4)
    assert torch.allclose(probs, log_probs.exp()) and labels.tolist() == [0, 1, 2]


def test_a_folder_that_is_no_run_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        RunFolder(tmp_path).read_config()
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        RunFolder(tmp_path).read_config()


def test_a_new_run_refuses_a_used_folder(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(FolderInUse, match="scalabl train did not write"), RunFolder(tmp_path).new_run():
        pass
    with RunFolder(tmp_path).new_run(overwrite=True):
        pass
