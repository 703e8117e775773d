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
    with pytest.raises(
        ValueError,
        match=r"target_modules: nope matched no linear layer.*its linear layers are: q_proj, k_proj",
    ):
        get_method(MethodConfig(method="scalabl", target_modules=("nope",))).wrap(make_tiny_llama())
