"""Evaluating a run: every sample count, the shifted tasks, the predictions written beside the metrics."""

from __future__ import annotations

import torch
from conftest import make_byte_tokenizer, make_tiny_llama
from safetensors.torch import load_file

from scalabl.api import BayesianLoRA
from scalabl.config import MethodConfig, RunConfig
from scalabl.evaluation import evaluate_model
from scalabl.metrics import compute_metrics
from scalabl.results import evaluations


def scalabl_model(method: str = "scalabl") -> BayesianLoRA:
    blora = BayesianLoRA(make_tiny_llama(), make_byte_tokenizer(), MethodConfig(method=method, rank=2))
    with torch.no_grad():  # a nonzero B, so that posterior samples differ
        for name, p in blora.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return blora


def test_every_sample_count_and_shifted_task_is_evaluated_and_written(tmp_path):
    config = RunConfig(max_test=4, n_samples=(3, 0), ood=("arc_c",))
    result = evaluate_model(scalabl_model(), config, tmp_path, progress=False)
    assert result["n_test"] == 4
    assert [s for s, _ in evaluations(result["eval"])] == [3, 0]
    assert list(result["eval"]) == ["S=3", "S=0"]
    assert result["eval"]["S=3"]["mi"] > 0 and result["eval"]["S=0"]["mi"] == 0
    shifted = result["ood"]["arc_c"]
    assert shifted["n_test"] == 4 and [s for s, _ in evaluations(shifted)] == [3, 0]
    assert 0 <= shifted["S=3"]["auroc_max_prob"] <= 1
    tensors = load_file(str(tmp_path / "predictions.safetensors"))
    assert set(tensors) == {
        "labels",
        "log_probs_S3",
        "log_probs_S0",
        "ood.arc_c.labels",
        "ood.arc_c.log_probs_S3",
        "ood.arc_c.log_probs_S0",
    }
    # the metrics are those of the written predictions
    again = compute_metrics(tensors["log_probs_S3"], tensors["labels"])
    assert again["nll"] == result["eval"]["S=3"]["nll"]


def test_a_deterministic_method_runs_one_pass(tmp_path):
    result = evaluate_model(scalabl_model("mle"), RunConfig(max_test=3, n_samples=(10, 4, 0)), tmp_path)
    assert list(result["eval"]) == ["S=0"]
