"""The shared method plumbing: bad adapter settings fail with the field and what is allowed."""

from __future__ import annotations

import pytest
from conftest import make_tiny_llama

from scalabl.methods import METHODS, MethodConfig, get_method


@pytest.mark.parametrize("method", list(METHODS))
def test_rank_larger_than_the_layer_is_refused(method):
    # tiny Llama: q_proj 32 -> 32, v_proj 32 -> 16
    with pytest.raises(ValueError, match=r"rank: 17 exceeds min\(in, out\) = 16 of .*v_proj \(32 -> 16\)"):
        get_method(MethodConfig(method=method, rank=17)).wrap(make_tiny_llama())


def test_target_modules_that_match_nothing_are_named():
    with pytest.raises(ValueError, match=r"target_modules: \['nope'\] matched no module"):
        get_method(MethodConfig(method="scalabl", target_modules=("nope",))).wrap(make_tiny_llama())


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
