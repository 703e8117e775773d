"""MethodConfig: every bad field is named with what is allowed; fixed values are enums; JSON round trip."""

from __future__ import annotations

import pytest

from scalabl.choices import KLDirection, MethodName, NoiseMode
from scalabl.config import MethodConfig


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"method": "nope"}, "method"),
        ({"rank": 0}, "rank"),
        ({"kl_direction": "sideways"}, "kl_direction"),
        ({"noise": "token"}, "noise"),
        ({"sigma_init": 0.0}, "sigma_init"),
        ({"prior_std": -1.0}, "prior_std"),
        ({"target_modules": ()}, "target_modules"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        MethodConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"method": "nope"}, "method"),
        ({"rank": 0}, "rank"),
        ({"dropout": 1.0}, "dropout"),
        ({"prior_std": 0}, "prior_std"),
        ({"ensemble_size": 0}, "ensemble_size"),
        ({"tfb_tolerance": -1}, "tfb_tolerance"),
        ({"laplace_hessian": "full"}, "laplace_hessian"),
        ({"kl_direction": "up"}, "kl_direction"),
    ],
)
def test_method_config_names_the_bad_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        MethodConfig(**kwargs)


def test_config_round_trip():
    config = MethodConfig(method="scalabl", rank=4, noise="shared", kl_direction="reference")
    assert MethodConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown field"):
        MethodConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_strings_become_the_enums_and_compare_as_strings():
    config = MethodConfig(method="blob", noise="shared", kl_direction="reference")
    assert config.method is MethodName.BLOB and config.noise is NoiseMode.SHARED
    assert config.kl_direction is KLDirection.REFERENCE and config.kl_direction == "reference"
    assert config.to_dict()["noise"] == "shared" and type(config.to_dict()["noise"]) is str
