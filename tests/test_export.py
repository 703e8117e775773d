"""Export: stock peft reads the exported adapter and predicts what scalabl predicts with n_samples = 0."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama, predicted, save_tiny_model, toy_examples
from peft import PeftModel

from scalabl.api import BayesianLoRA
from scalabl.cli import main
from scalabl.export import export_peft
from scalabl.methods import MethodConfig
from scalabl.scoring import Scorer

EXAMPLES = toy_examples(6, seed=4, varied=True)


def trained(method: str, **kw) -> BayesianLoRA:
    blora = BayesianLoRA(
        make_tiny_llama(), make_byte_tokenizer(), MethodConfig(method=method, rank=4, **kw), seed=0
    )
    blora.fit(toy_examples(8), steps=3, batch_size=4, lr=2e-2, progress=False)
    return blora


def stock_peft_log_probs(folder) -> torch.Tensor:
    model = PeftModel.from_pretrained(make_tiny_llama(), str(folder))  # stock peft, no scalabl layers
    return predicted(model, Scorer(make_byte_tokenizer()), EXAMPLES, n_samples=0)


@pytest.mark.parametrize("method", ["scalabl", "blob", "mle", "mcdropout", "ivon", "blora_xs"])
def test_stock_peft_predicts_the_posterior_mean(method, tmp_path):
    blora = trained(method)
    export_peft(blora, tmp_path / "peft", base_model="tiny")
    ours = blora.predict_log_proba(EXAMPLES, n_samples=0)
    assert torch.allclose(stock_peft_log_probs(tmp_path / "peft"), ours, atol=1e-5)
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4


def test_ensemble_exports_one_member(tmp_path):
    blora = trained("ensemble", ensemble_size=2)
    with pytest.raises(ValueError, match="member"):
        export_peft(blora, tmp_path / "x", base_model="tiny")
    notes = export_peft(blora, tmp_path / "m1", base_model="tiny", member=1)
    assert any("member 1 of 2" in n for n in notes)
    blora.model.set_adapter("member1")
    expected = predicted(blora.model, blora.scorer, EXAMPLES, n_samples=0)
    blora.model.set_adapter("member0")
    assert torch.allclose(stock_peft_log_probs(tmp_path / "m1"), expected, atol=1e-5)


def test_cli_export_of_a_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_dir = save_tiny_model(tmp_path / "tiny")
    run = tmp_path / "run"
    argv = ["train", "--model", str(model_dir), "--method", "scalabl", "--steps", "2", "--batch-size", "2",
            "--max-train", "4", "--max-test", "3", "--n-samples", "0", "--rank", "2", "--out", str(run), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert main(["export", str(run), str(tmp_path / "peft")]) == 0
    assert "posterior mean only" in capsys.readouterr().out
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()
    assert main(["export", str(run), str(tmp_path / "bad"), "--member", "1"]) == 2
