"""RunConfig: validation names the field, JSON round trips, and how a run predicts."""

from __future__ import annotations

import json

import pytest

from scalabl.config import MethodConfig, PredictConfig, RunConfig, TrainConfig


# ---- RunConfig -----------------------------------------------------------------------------------
def test_run_config_round_trip():
    config = RunConfig(
        model="some/folder",
        task="arc_challenge",
        max_train=10,
        max_test=5,
        n_samples=[4, 0],
        method=MethodConfig(method="mle", rank=2, target_modules=["q_proj"]),
        train=TrainConfig(steps=3, recipe="blob", variational_lr=1e-3),
    )
    assert config.n_samples == (4, 0)  # normalised to a tuple
    d = config.to_dict()
    assert RunConfig.from_dict(d) == config
    # ... and through JSON, as config.json is written and read
    assert RunConfig.from_dict(json.loads(json.dumps(d))) == config
    assert d["method"]["rank"] == 2 and d["train"]["recipe"] == "blob"
    assert RunConfig.from_dict(RunConfig().to_dict()) == RunConfig()


def test_run_config_from_partial_dict_uses_defaults():
    config = RunConfig.from_dict({"task": "arc_challenge", "train": {"steps": 5}})
    assert config.task == "arc_challenge"
    assert config.train == TrainConfig(steps=5)
    assert config.method == MethodConfig()


@pytest.mark.parametrize(
    ("d", "name"),
    [
        ({"modle": "x"}, "modle"),
        ({"method": {"rnk": 2}}, "rnk"),
        ({"train": {"stepz": 2}}, "stepz"),
    ],
)
def test_run_config_unknown_field_raises(d, name):
    with pytest.raises(ValueError, match=name):
        RunConfig.from_dict(d)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_samples": (3, -1)}, "n_samples"),
        ({"n_samples": ()}, "n_samples"),
        ({"scoring": "nope"}, "scoring"),
        ({"dtype": "int3"}, "dtype"),
        ({"max_test": 0}, "max_test"),
        ({"max_train": 0}, "max_train"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        (
            {"task": "mmlu_nope"},
            r"task: unknown task 'mmlu_nope'; allowed: arc_easy, .*boolq.*, or jsonl:PATH",
        ),
        ({"truncation": "right"}, "truncation"),
        ({"max_validation": 0}, "max_validation"),
        ({"length_norm": "mean"}, "length_norm"),
        ({"max_length": 0}, "max_length"),
        ({"eval_split": "train"}, "eval_split"),
        (
            {"eval_split": "validation", "method": MethodConfig(method="temperature")},
            "eval_split: 'validation'",
        ),
        ({"eval_split": "validation", "method": MethodConfig(temperature=True)}, "eval_split: 'validation'"),
        ({"eval_split": "validation", "ood": ("arc_c",)}, "eval_split: 'validation'"),
    ],
)
def test_run_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RunConfig(**kwargs)


def test_a_run_predicts_with_its_own_settings():
    config = RunConfig(eval_batch_size=3, sample_modules="last:2", train=TrainConfig(seed=5))
    assert config.predict_config(4) == PredictConfig(
        n_samples=4, sample_modules="last:2", batch_size=3, batch_samples=True, seed=5
    )


def test_fixed_value_fields_become_enums_and_serialise_as_strings():
    config = RunConfig(scoring="letter", dtype="bf16", method=MethodConfig(noise="shared"))
    assert config.scoring == "letter" and config.dtype == "bfloat16"
    d = config.to_dict()
    assert d["dtype"] == "bfloat16" and type(d["dtype"]) is str and type(d["method"]["noise"]) is str
    assert json.loads(json.dumps(d)) == d
