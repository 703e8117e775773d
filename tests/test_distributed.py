"""Data parallelism: 2 CPU processes (gloo, under `accelerate launch`) against 1 process with the
same global batch: the same loss curve, adapter and metrics, up to float summation order."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model, toy_examples
from safetensors.torch import load_file

from scalabl import distributed
from scalabl.bayesian import bayesian_modules

RTOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    model = save_tiny_model(root / "model")
    config = root / "config.json"
    config.write_text(
        json.dumps(
            {
                "model": str(model),
                "task": "arc_easy",
                "max_train": 16,
                "max_test": 6,
                "n_samples": [0],
                "method": {"method": "scalabl", "rank": 2},
                "train": {"steps": 4, "batch_size": 4, "log_every": 1, "lr": 0.01, "checkpoint_every": 2},
            }
        )
    )
    args = ["-m", "scalabl", "train", "--config", str(config), "--quiet", "--out"]
    one, two = root / "one", root / "two"
    subprocess.run([sys.executable, *args, str(one)], check=True, env=_env(), timeout=600)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--main_process_port", str(_free_port())]
    done = subprocess.run([*launch, *args, str(two)], env=_env(), timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = root / "fsdp"
    launch[-1] = str(_free_port())
    fsdp = subprocess.run(
        [*launch, *args, str(sharded), "--fsdp"], env=_env(), timeout=600, capture_output=True, text=True
    )
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    return {"one": one, "two": two, "fsdp": sharded, "stdout": done.stdout}


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["two", "fsdp"])
def test_two_processes_follow_the_one_process_loss_curve(runs, mode):
    one, two = _history(runs["one"]), _history(runs[mode])
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two, strict=True):
        # the KL (and N) counted once: twice would move the posterior and its KL at once
        assert b["nll"] == pytest.approx(a["nll"], rel=RTOL) and b["kl"] == pytest.approx(a["kl"], rel=RTOL)
        assert b["sigma"] == pytest.approx(a["sigma"], rel=RTOL)


@pytest.mark.parametrize("mode", ["two", "fsdp"])
def test_two_processes_train_the_same_adapter_and_metrics(runs, mode):
    a = load_file(str(runs["one"] / "adapter.safetensors"))
    b = load_file(str(runs[mode] / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=RTOL, atol=1e-6, msg=k)
    m1 = json.loads((runs["one"] / "metrics.json").read_text())["eval"]["S=0"]
    m2 = json.loads((runs[mode] / "metrics.json").read_text())["eval"]["S=0"]
    assert json.loads((runs[mode] / "metrics.json").read_text())["processes"] == 2
    assert m2["acc"] == m1["acc"]
    for key in ("nll", "ece", "brier"):
        assert m2[key] == pytest.approx(m1[key], rel=RTOL)


def test_only_the_main_process_writes_and_prints(runs):
    assert runs["stdout"].count("run folder:") == 1
    assert (runs["two"] / "checkpoint").is_dir()
    assert json.loads((runs["fsdp"] / "config.json").read_text())["fsdp"] is True
    assert not (runs["fsdp"] / "checkpoint").exists()  # sharded optimiser state is not checkpointed


def test_fsdp_shards_the_decoder_layers_in_one_process(tmp_path, monkeypatch):
    """fully_shard on a 1-process gloo group: the layers' adapter parameters become DTensors and
    a ScalaBL step, its KL and the gathered adapter still work."""
    import torch.distributed as dist
    from conftest import make_byte_tokenizer, make_tiny_llama

    from scalabl.api import BayesianLoRA
    from scalabl.methods import MethodConfig

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        blora = BayesianLoRA(make_tiny_llama(), make_byte_tokenizer(), MethodConfig(method="scalabl", rank=2))
        distributed.shard_model(blora.model)
        trainable = [p for p in blora.model.parameters() if p.requires_grad]
        assert trainable and all(distributed.sharded(p) for p in trainable)
        history = blora.fit(toy_examples(8), steps=2, batch_size=4, log_every=1, progress=False)
        assert all(h["kl"] > 0 and h["sigma"] > 0 for h in history)
        state = blora.method.adapter_state(blora.model)
        assert state and not any(distributed.sharded(v) for v in state.values())
    finally:
        dist.destroy_process_group()


def test_fsdp_is_refused_for_post_hoc_methods():
    from scalabl.config import RunConfig
    from scalabl.methods import MethodConfig

    with pytest.raises(ValueError, match="fsdp: supported for methods trained end to end"):
        RunConfig(fsdp=True, method=MethodConfig(method="laplace"))


def test_rows_of_a_global_batch_get_that_batch_s_noise():
    """What each process draws: its rows of the noise one process draws for the whole batch."""
    from conftest import make_byte_tokenizer, make_tiny_llama

    from scalabl.methods import MethodConfig
    from scalabl.methods.scalabl import ScalaBL
    from scalabl.scoring import Scorer

    model = ScalaBL(MethodConfig(rank=2, sigma_init=0.5)).wrap(make_tiny_llama())
    with torch.no_grad():
        for m in bayesian_modules(model):
            m.log_sigma.fill_(0.0)
    batch = toy_examples(4)
    scorer = Scorer(make_byte_tokenizer())
    with torch.no_grad():
        whole = scorer.class_logits(model, batch, generator=torch.Generator().manual_seed(1))
        for rows in ([0, 2], [1, 3]):
            part = scorer.class_logits(
                model, [batch[r] for r in rows], generator=torch.Generator().manual_seed(1), rows_of=(4, rows)
            )
            torch.testing.assert_close(part, whole[rows], atol=1e-5, rtol=0)


def test_a_global_batch_must_split_evenly(monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: 2)
    with pytest.raises(ValueError, match="global batch 3 must be a multiple of the 2 processes"):
        distributed.my_rows(3)


def test_single_process_helpers_are_the_identity():
    assert not distributed.launched() and distributed.world() == 1 and distributed.is_main()
    assert distributed.my_rows(3) == [0, 1, 2] and distributed.shard([1, 2, 3]) == [1, 2, 3]
    t = torch.arange(6.0)
    assert distributed.unshard(t, 6) is t and distributed.mean(2.5) == 2.5
