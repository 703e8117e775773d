"""scalabl active: rounds of train / evaluate / acquire on a tiny model, resumed where they stopped,
the acquired questions the top scores of the saved round's own posterior."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import save_tiny_model

from scalabl.acquisition import acquisition_scores, top_k
from scalabl.active import run_active
from scalabl.api import BayesianLoRA
from scalabl.cli import main
from scalabl.config import MethodConfig, RunConfig, TrainConfig
from scalabl.config.active import ActiveConfig
from scalabl.testing import make_byte_tokenizer, make_tiny_llama


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def run_config(model_dir, method: str = "scalabl", **method_kw) -> RunConfig:
    return RunConfig(
        model=str(model_dir),
        task="arc_easy",
        max_test=4,
        max_validation=4,
        n_samples=(2,),
        method=MethodConfig(method=method, rank=2, **method_kw),
        train=TrainConfig(steps=2, batch_size=2, lr=1e-2, val_size=0, checkpoint_every=1),
    )


ACTIVE = ActiveConfig(pool=10, initial=3, acquire=2, rounds=2, acquisition_samples=3)


@pytest.fixture(scope="module")
def bald_run(model_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        out = tmp_path_factory.mktemp("active") / "bald"
        rounds = run_active(run_config(model_dir), ACTIVE, out, progress=False)
    return out, rounds


def test_rounds_grow_the_labelled_set_from_the_pool(bald_run):
    out, rounds = bald_run
    assert [r["n_labels"] for r in rounds] == [3, 5, 7]
    for prev, nxt in zip(rounds, rounds[1:], strict=False):
        assert nxt["labelled"] == prev["labelled"] + prev["acquired"]
        assert not set(prev["acquired"]) & set(prev["labelled"]) and len(prev["acquired"]) == 2
        assert all(0 <= i < 10 for i in prev["acquired"])
    assert rounds[-1]["acquired"] == [] and rounds[-1]["n_test"] == 4
    for r in rounds:
        assert 0 <= r["metrics"]["acc"] <= 1 and r["metrics"]["nll"] > 0
    assert {p.name for p in out.iterdir()} == {
        "active.json",
        "rounds",
        "curve.json",
        "curve.png",
        "report.md",
    }
    assert "| 2 | 7 |" in (out / "report.md").read_text()


def test_acquired_questions_are_the_top_bald_scores_of_the_rounds_posterior(bald_run, model_dir):
    out, rounds = bald_run
    config = run_config(model_dir)
    pool = config.splits().train[:10]
    first = rounds[0]
    blora = BayesianLoRA.load(out / "rounds" / "0", make_tiny_llama(), make_byte_tokenizer())
    unlabelled = [i for i in range(10) if i not in first["labelled"]]
    samples = blora.predict([pool[i] for i in unlabelled], config.predict_config(3)).samples
    scores = acquisition_scores(samples, "bald")
    assert [unlabelled[i] for i in top_k(scores, 2)] == first["acquired"]
    assert first["scores"] == pytest.approx([float(scores[i]) for i in top_k(scores, 2)])
    assert all(s >= 0 for s in first["scores"])


def test_an_interrupted_run_continues_at_its_round(bald_run, model_dir, monkeypatch):
    out, rounds = bald_run
    copy = out.parent / "resumed"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "rounds" / "2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = run_active(run_config(model_dir), ACTIVE, copy, progress=False)
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert [strip(r) for r in again] == [strip(r) for r in rounds]
    assert json.loads((copy / "rounds" / "0" / "round.json").read_text())["seconds"] == rounds[0]["seconds"]


def test_other_settings_in_the_same_folder_are_refused(bald_run, model_dir):
    out, _ = bald_run
    with pytest.raises(ValueError, match="active.acquire"):
        run_active(run_config(model_dir), ActiveConfig(pool=10, initial=3, acquire=3, rounds=2), out)


def test_bald_needs_a_posterior_and_the_pool_enough_questions(model_dir, tmp_path):
    with pytest.raises(ValueError, match="bald"):
        run_active(run_config(model_dir, "mle"), ACTIVE, tmp_path / "x")
    with pytest.raises(ValueError, match="glm"):  # refused before any training
        run_active(run_config(model_dir, "laplace"), ACTIVE, tmp_path / "y")
    with pytest.raises(ValueError, match="pool"):
        ActiveConfig(pool=5, initial=3, acquire=2, rounds=2)


def test_ensemble_bald_and_a_warm_start(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    active = ActiveConfig(pool=8, initial=2, acquire=2, rounds=1, start="warm")
    rounds = run_active(
        run_config(model_dir, "ensemble", ensemble_size=2), active, tmp_path / "ens", progress=False
    )
    assert len(rounds[0]["scores"]) == 2
    cold = run_active(
        run_config(model_dir, "ensemble", ensemble_size=2),
        ActiveConfig(pool=8, initial=2, acquire=2, rounds=1),
        tmp_path / "cold",
        progress=False,
    )
    assert cold[0] == {**rounds[0], "seconds": cold[0]["seconds"]}  # round 0 is the same either way
    warm_state = BayesianLoRA.load(
        tmp_path / "ens" / "rounds" / "1", make_tiny_llama(), make_byte_tokenizer()
    )
    cold_state = BayesianLoRA.load(
        tmp_path / "cold" / "rounds" / "1", make_tiny_llama(), make_byte_tokenizer()
    )
    a = warm_state.method.adapter_state(warm_state.model)
    b = cold_state.method.adapter_state(cold_state.model)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # round 1 trained on from round 0's adapter


def test_cli_active_prints_the_curve(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["active", str(tmp_path / "cli"), "--model", str(model_dir), "--task", "arc_easy", "--max-test", "3",
            "--n-samples", "2", "--method", "mcdropout", "--rank", "2", "--steps", "1", "--batch-size", "2",
            "--pool", "6", "--initial", "2", "--acquire", "2", "--rounds", "1", "--acquisition", "entropy",
            "--acquisition-samples", "2", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "round" in out and "    1      4" in out
