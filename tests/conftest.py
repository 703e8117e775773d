"""Shared fixtures: the tiny random models of :mod:`scalabl.testing`, toy questions, and a prediction helper."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from scalabl.config import MethodConfig, PredictConfig, RunConfig, TrainConfig
from scalabl.examples import Example
from scalabl.predict import bayesian_model_average, predict_samples
from scalabl.runs import train_run
from scalabl.testing import QUANT_HIDDEN, make_byte_tokenizer, make_tiny_llama, save_tiny_model

__all__ = [
    "QUANT_HIDDEN",
    "make_byte_tokenizer",
    "make_tiny_llama",
    "predicted",
    "save_tiny_model",
    "toy_examples",
]


def toy_examples(n: int = 24, seed: int = 0, *, varied: bool = False) -> list[Example]:
    """'a+b=?' with digit choices, the right sum among them: learnable from the question.

    ``varied=False``: three choices ``{s, s+1, s+3} mod 10``; ``varied=True``: 2, 3 or 4 choices
    in turn (so C_max = 4 and some rows have absent choices).
    """
    rng = random.Random(seed)
    out = []
    for k in range(n):
        a, b = rng.randint(0, 4), rng.randint(0, 4)
        s = a + b
        if varied:
            choices = [s] + rng.sample([d for d in range(10) if d != s], 1 + k % 3)
            rng.shuffle(choices)
        else:
            choices = sorted({s, (s + 1) % 10, (s + 3) % 10})
        out.append(
            Example(
                id=f"q{k}", question=f"{a}+{b}=?", choices=tuple(map(str, choices)), label=choices.index(s)
            )
        )
    return out


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Nothing may reach a hub from the tests."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import: set the constant it consults too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run fastest on one thread; two threads on a shared 2-core machine spin ~100x longer."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return make_byte_tokenizer()


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    return make_tiny_llama()


def predicted(model, scorer, examples, *, return_samples: bool = False, **options):
    """The model average of :func:`scalabl.predict.predict_samples` (and the samples), with the
    :class:`~scalabl.config.PredictConfig` fields as keywords."""
    samples = predict_samples(model, scorer, examples, PredictConfig(**options))
    average = bayesian_model_average(samples)
    return (average, samples) if return_samples else average


def trained_tiny_run(tmp_path_factory, method: MethodConfig, **run: object) -> tuple[RunConfig, Path]:
    """A ScalaBL-style run of the tiny saved model on ARC-Easy (two steps, no validation curve),
    trained into a fresh folder; ``run`` overrides RunConfig fields. Returns its config and folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        model_dir = save_tiny_model(tmp_path_factory.mktemp("tiny-model"))
        fields = {
            "task": "arc_easy",
            "max_train": 6,
            "train": TrainConfig(steps=2, batch_size=3, lr=1e-2, val_size=0),
            **run,
        }
        config = RunConfig(model=str(model_dir), method=method, **fields)
        out = tmp_path_factory.mktemp("runs") / "run"
        train_run(config, out, progress=False)
    return config, out


def tiny_bench(out, model: Path, methods: dict, *, tasks=("arc_easy",), seeds=(0, 1), **extra) -> dict:
    """A bench config of two-step cells of the tiny saved ``model`` (for tests of the grid itself)."""
    return {
        "out": str(out),
        "tasks": list(tasks),
        "seeds": list(seeds),
        "base": {
            "model": str(model),
            "max_train": 6,
            "max_test": 4,
            "max_validation": 4,
            "n_samples": [2, 0],
            "method": {"rank": 2},
            "train": {"steps": 2, "batch_size": 2},
        },
        "methods": methods,
        **extra,
    }
