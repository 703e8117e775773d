"""PredictConfig: one validated bundle of how a prediction runs; the sample_modules spec."""

from __future__ import annotations

import dataclasses

import pytest

from scalabl.config import PredictConfig
from scalabl.config.predict import parse_sample_modules


def test_parse_sample_modules():
    assert (
        parse_sample_modules("all") is None
        and parse_sample_modules("lm_head") == 0
        and parse_sample_modules("last:3") == 3
    )
    for bad in ("last:0", "last:x", "first:2", "head"):
        with pytest.raises(ValueError, match="allowed: all, lm_head, last:K"):
            parse_sample_modules(bad)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_samples": -1}, "n_samples"),
        ({"n_samples": 1.5}, "n_samples"),
        ({"batch_size": 0}, "batch_size"),
        ({"sample_modules": "first:2"}, "sample_modules"),
    ],
)
def test_predict_config_rejects_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        PredictConfig(**kwargs)


def test_predict_config_is_frozen():
    config = PredictConfig(n_samples=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_samples = 4  # type: ignore[misc]
    assert dataclasses.replace(config, n_samples=0).n_samples == 0
