"""A hub folder round trip, offline: ``scalabl export --with-posterior`` writes what stock peft reads
(the posterior mean, with scalabl not importable) and what ``scalabl.from_pretrained`` rebuilds the
whole posterior from (the same sampled predictions as the run)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import trained_tiny_run

import scalabl
from scalabl.bayesian import sampling
from scalabl.cli import main
from scalabl.config import MethodConfig, PredictConfig
from scalabl.hub import POSTERIOR
from scalabl.runs import load_run
from scalabl.tasks import get_task

IDS = [[5, 17, 99, 3, 42, 8, 120, 64]]

STOCK_PEFT = """
import json, sys
sys.modules["scalabl"] = None  # scalabl cannot be imported: stock peft and transformers only
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[1]), sys.argv[2]).eval()
with torch.no_grad():
    print(json.dumps(model(input_ids=torch.tensor(json.loads(sys.argv[3]))).logits.tolist()))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    config, run = trained_tiny_run(
        tmp_path_factory, MethodConfig(method="scalabl", rank=2, sigma_init=0.5), max_test=4
    )
    out = tmp_path_factory.mktemp("hub") / "repo"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        assert main(["export", str(run), str(out), "--with-posterior"]) == 0
    return config, run, out


def test_the_folder_holds_the_peft_adapter_the_posterior_and_a_model_card(exported):
    config, run, out = exported
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    for name in ("config.json", "adapter.safetensors", "adapter_config.json", "metrics.json"):
        assert (out / POSTERIOR / name).read_bytes() == (run / name).read_bytes()
    card = (out / "README.md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert card.startswith("---\nlibrary_name: peft\n") and f"base_model: {config.model}" in card
    assert "scalabl.from_pretrained" in card and "PeftModel.from_pretrained" in card
    assert "its spread is not exported" in card  # what the peft form leaves out
    acc = metrics["evaluations"][0]["metrics"]["acc"] if "evaluations" in metrics else None
    assert acc is None or f"{acc:.3f}" in card


def test_stock_peft_reads_the_posterior_mean_without_scalabl(exported):
    config, run, out = exported
    done = subprocess.run(
        [sys.executable, "-c", STOCK_PEFT, config.model, str(out), json.dumps(IDS)],
        capture_output=True,
        text=True,
        check=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    stock = torch.tensor(json.loads(done.stdout.splitlines()[-1]))
    _, blora = load_run(run)
    with torch.no_grad(), sampling(blora.model, False):
        ours = blora.model(input_ids=torch.tensor(IDS)).logits
    assert torch.allclose(stock, ours, atol=1e-5)


def test_from_pretrained_rebuilds_the_whole_posterior(exported, tmp_path):
    config, run, out = exported
    model_copy = shutil.copytree(config.model, tmp_path / "base")  # the base model found elsewhere
    rebuilt = scalabl.from_pretrained(out, base_model=str(model_copy))
    _, original = load_run(run)
    assert rebuilt.config == original.config and rebuilt.extra_parameters == original.extra_parameters > 0
    questions = get_task("arc_easy").offline()[:3]
    for s in (0, 3):
        options = PredictConfig(n_samples=s, seed=2)
        assert torch.equal(
            rebuilt.predict(questions, options).samples, original.predict(questions, options).samples
        )


def test_from_pretrained_names_what_is_missing(exported, tmp_path, monkeypatch):
    _, _, out = exported
    plain = tmp_path / "peft-only"
    plain.mkdir()
    shutil.copy(out / "adapter_config.json", plain)
    with pytest.raises(FileNotFoundError, match="no scalabl posterior .*--with-posterior"):
        scalabl.from_pretrained(plain)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not a local folder, and the hub did not give it"):
        scalabl.from_pretrained("nobody/no-such-scalabl-adapter")
