"""Evaluating a run: every sample count, the shifted tasks, the predictions written beside the metrics."""

from __future__ import annotations

import math

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


def test_a_temperature_on_top_reads_the_source_predictions_and_equals_scoring_again(tmp_path):
    from dataclasses import replace

    from scalabl.evaluation import untempered_source
    from scalabl.run_folder import RunFolder

    blora = scalabl_model()
    config = RunConfig(max_test=4, n_samples=(3,), ood=("arc_c",))
    source = RunFolder(tmp_path / "source")
    source.path.mkdir()
    source.write_config(config)
    source.write_metrics(evaluate_model(blora, config, source.path, progress=False))

    on_top = replace(config, method=replace(config.method, temperature=True), from_run=str(source.path))
    blora.temperature, blora.same_as_run = 1.7, source.path  # as calibrate() and init_from() leave them
    assert untempered_source(on_top, blora).path == source.path
    reused = evaluate_model(blora, on_top, tmp_path / "reused", progress=False, untempered=source)
    scored = evaluate_model(blora, on_top, tmp_path / "scored", progress=False)
    for part in (reused["eval"]["S=3"], reused["ood"]["arc_c"]["S=3"]):
        assert part["tempered_from"] == str(source.path)
    for key in ("nll", "ece", "acc", "brier", "mi"):
        assert math.isclose(
            reused["eval"]["S=3"][key], scored["eval"]["S=3"][key], rel_tol=1e-9, abs_tol=1e-12
        )
        assert math.isclose(
            reused["ood"]["arc_c"]["S=3"][key],
            scored["ood"]["arc_c"]["S=3"][key],
            rel_tol=1e-9,
            abs_tol=1e-12,
        )
    a = load_file(str(tmp_path / "reused" / "predictions.safetensors"))
    b = load_file(str(tmp_path / "scored" / "predictions.safetensors"))
    assert torch.allclose(a["log_probs_S3"], b["log_probs_S3"], atol=1e-9)
    # the temperature changed the predictions: they are not the source's
    assert not torch.allclose(
        a["log_probs_S3"], load_file(str(source.path / "predictions.safetensors"))["log_probs_S3"]
    )

    # anything that changes the untempered predictions (scoring, seed) or no temperature: score again
    for changed in (
        replace(on_top, length_norm="tokens"),
        replace(on_top, train=replace(on_top.train, seed=1)),
    ):
        assert untempered_source(changed, blora) is None
    blora.temperature = None
    assert untempered_source(on_top, blora) is None
