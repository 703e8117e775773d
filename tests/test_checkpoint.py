"""Checkpoints: an interrupted run resumes to the bit-identical result; a SIGKILLed CLI run too;
NaN stops training with the last good checkpoint kept; checkpoints hold no pickle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama, save_tiny_model, toy_examples
from safetensors.torch import load_file

from scalabl.api import BayesianLoRA
from scalabl.checkpoint import CHECKPOINT_FILE, read_checkpoint
from scalabl.cli import main
from scalabl.config import TrainConfig
from scalabl.methods import MethodConfig
from scalabl.scoring import Scorer
from scalabl.train import TrainingDiverged

TRAIN = toy_examples(10)
CASES = {
    "mle": ({"method": "mle", "dropout": 0.1}, {}),  # peft dropout: the global RNG must resume too
    "scalabl-elbo": ({"method": "scalabl"}, {"variational_lr": 2e-2}),
    "scalabl-blob": ({"method": "scalabl"}, {"recipe": "blob"}),  # two optimisers
    "ensemble": ({"method": "ensemble", "ensemble_size": 2}, {}),
    "mcdropout": ({"method": "mcdropout"}, {}),
    # IVON: its Hessian, momentum and step count, and the global RNG it samples weights from
    "ivon": ({"method": "ivon", "ivon_lr": 0.5, "ivon_train_samples": 2}, {}),
    # SWAG: its moments (adapter buffers) collected from step 3 on, at the learning rate held there
    "blora_xs": ({"method": "blora_xs", "swag_start": 0.3, "swag_rank": 2}, {}),
}


class Interrupt(Exception):
    pass


def build(method_kw: dict) -> BayesianLoRA:
    return BayesianLoRA(make_tiny_llama(), make_byte_tokenizer(), MethodConfig(rank=4, **method_kw), seed=0)


def adapter(blora: BayesianLoRA) -> dict[str, torch.Tensor]:
    return blora.method.adapter_state(blora.model)


@pytest.mark.parametrize("case", list(CASES))
def test_interrupted_training_resumes_bit_identically(case, tmp_path):
    method_kw, train_kw = CASES[case]
    config = TrainConfig(steps=7, batch_size=3, lr=1e-2, log_every=1, checkpoint_every=2, seed=3, **train_kw)

    whole = build(method_kw)
    history = whole.fit(TRAIN, config, checkpoint_dir=tmp_path / "whole", progress=False)

    broken = build(method_kw)
    calls = {"n": 0}

    def stop_at_step_5(record: dict) -> None:
        calls["n"] += 1
        if calls["n"] == 5:  # logged step 5 (of the first member): the checkpoint at step 4 exists
            raise Interrupt

    with pytest.raises(Interrupt):
        broken.fit(TRAIN, config, checkpoint_dir=tmp_path / "run", progress=False, on_log=stop_at_step_5)

    resumed = build(method_kw)  # a fresh process would rebuild the model from scratch
    resumed_history = resumed.fit(TRAIN, config, checkpoint_dir=tmp_path / "run", resume=True, progress=False)
    a, b = adapter(whole), adapter(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(resumed_history) == strip(history)
    examples = toy_examples(4, seed=9)
    assert torch.equal(
        whole.predict_log_proba(examples, n_samples=2, seed=1),
        resumed.predict_log_proba(examples, n_samples=2, seed=1),
    )


def test_resume_refuses_a_different_training_config(tmp_path):
    blora = build({"method": "mle"})
    blora.fit(TRAIN, steps=2, batch_size=2, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="lr"):
        build({"method": "mle"}).fit(
            TRAIN, steps=2, batch_size=2, lr=0.5, checkpoint_dir=tmp_path, resume=True, progress=False
        )


class NaNAfter(Scorer):
    """A scorer whose logits turn NaN from the ``n``-th call on (a diverging model, on demand)."""

    def __init__(self, tokenizer, n: int) -> None:
        super().__init__(tokenizer)
        self.calls, self.n = 0, n

    def class_logits(self, model, examples, **kwargs):
        self.calls += 1
        logits = super().class_logits(model, examples, **kwargs)
        return logits * float("nan") if self.calls >= self.n else logits


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    blora = build({"method": "scalabl"})
    blora.scorer = NaNAfter(blora.tokenizer, n=4)
    with pytest.raises(TrainingDiverged, match=r"step 4: .*not finite.*checkpoint \(step 2\)"):
        blora.fit(TRAIN, steps=6, batch_size=2, checkpoint_every=2, checkpoint_dir=tmp_path, progress=False)
    tensors, meta = read_checkpoint(tmp_path)
    assert meta["loop"]["step"] == 2
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))
    # the weights in memory were not stepped with the NaN gradient either
    assert all(torch.isfinite(p).all() for n, p in blora.model.named_parameters() if "lora_" in n)


def test_checkpoint_is_safetensors_with_json_metadata_and_no_pickle(tmp_path):
    build({"method": "scalabl"}).fit(TRAIN, steps=2, batch_size=2, checkpoint_dir=tmp_path, progress=False)
    raw = (tmp_path / CHECKPOINT_FILE).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert "scalabl_checkpoint" in header["__metadata__"]
    assert b"\x80\x04" not in raw[: 8 + header_len]  # no pickle protocol marker in the header
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"\x80\x04K\x01.")  # a pickle, not a checkpoint
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path)


# ---- a real kill ---------------------------------------------------------------------------------
def cli_argv(model_dir: Path, out: Path) -> list[str]:
    return [
        "train",
        "--model", str(model_dir),
        "--task", "arc_easy",
        "--method", "scalabl",
        "--steps", "120",
        "--batch-size", "2",
        "--checkpoint-every", "3",
        "--max-train", "16",
        "--max-test", "4",
        "--n-samples", "2",
        "--rank", "2",
        "--out", str(out),
        "--quiet",
    ]  # fmt: skip


def test_sigkilled_cli_run_resumes_to_the_same_adapter_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_dir = save_tiny_model(tmp_path / "tiny")
    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    code = "import sys, torch; torch.set_num_threads(1); from scalabl.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *cli_argv(model_dir, killed)], env=env)
    ckpt = killed / "checkpoint" / CHECKPOINT_FILE
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # a few more steps, so the kill lands between checkpoints as often as on one
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()
    step = read_checkpoint(killed / "checkpoint")[1]["loop"]["step"]
    assert 0 < step < 120

    assert main(["train", "--resume", str(killed), "--quiet"]) == 0
    whole = tmp_path / "whole"
    assert main(cli_argv(model_dir, whole)) == 0

    a, b = load_file(str(killed / "adapter.safetensors")), load_file(str(whole / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (killed, whole))
    for key in ("S=2",):
        for metric in ("acc", "ece", "nll", "brier"):
            assert ma["eval"][key][metric] == mb["eval"][key][metric]
    ha = [json.loads(line) for line in (killed / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in ha] == list(range(10, 121, 10))  # no line lost or repeated by the kill


def test_resume_takes_no_other_options(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--lr", "0.1"]) == 2
    assert "drop --lr" in capsys.readouterr().err
