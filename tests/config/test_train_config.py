"""TrainConfig: validation names the field; JSON round trip."""

from __future__ import annotations

import pytest

from scalabl.config import TrainConfig


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"grad_accum": -1}, "grad_accum"),
        ({"recipe": "nope"}, "recipe"),
        ({"lr": -1e-3}, "lr"),
        ({"lr": 0.0}, "lr"),
        ({"kl_lr": -0.1}, "kl_lr"),
        ({"variational_lr": -1.0}, "variational_lr"),
        ({"warmup_ratio": 1.5}, "warmup_ratio"),
        ({"kl_weight": -1.0}, "kl_weight"),
    ],
)
def test_train_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)


def test_train_config_dict_round_trip_and_unknown_field():
    config = TrainConfig(steps=7, recipe="blob", variational_lr=1e-3)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="stepz"):
        TrainConfig.from_dict({"stepz": 3})
