"""The Bayesian-module protocol: noise is drawn, re-indexed, stacked and cleared through it alone."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama

from scalabl.bayesian import (
    BayesianModule,
    bayesian_modules,
    clear_noise,
    decoder_layers,
    draw_noise,
    layer_index,
    output_head,
    sampling,
    sampling_only,
    select_noise,
    total_kl,
)
from scalabl.config import MethodConfig
from scalabl.methods import get_method


def wrapped(method: str = "scalabl", **kw):
    return get_method(MethodConfig(method=method, rank=2, **kw)).wrap(make_tiny_llama())


def test_noise_rows_are_drawn_reindexed_and_cleared():
    model = wrapped()
    modules = bayesian_modules(model)
    assert modules and all(isinstance(m, BayesianModule) and m.stackable for m in modules)
    draw_noise(model, 3, torch.Generator().manual_seed(0))
    rows = [m.noise_rows().clone() for m in modules]
    assert all(r.shape == (3, 2) for r in rows)
    select_noise(model, torch.tensor([2, 2, 0]))
    for m, r in zip(modules, rows, strict=True):
        assert torch.equal(m.noise_rows(), r[[2, 2, 0]])
    modules[0].set_noise_rows(torch.zeros(4, 2))
    assert modules[0].noise_rows().shape == (4, 2)
    clear_noise(model)
    assert all(m.noise_rows() is None for m in modules)


@pytest.mark.parametrize(
    ("method", "kw", "copies", "stackable"),
    [
        ("scalabl", {}, True, True),
        ("scalabl", {"noise": "shared"}, False, False),
        ("blob", {}, False, False),  # flipout rows of one draw are correlated
        ("mcdropout", {}, True, False),  # masks per token: independent copies, no rows to stack
    ],
)
def test_modules_say_how_their_samples_may_be_batched(method, kw, copies, stackable):
    for m in bayesian_modules(wrapped(method, **kw)):
        assert m.copies_in_one_draw is copies and m.stackable is stackable
        if method != "scalabl":
            with pytest.raises(NotImplementedError):
                m.noise_rows()


def test_sampling_switches_and_restores():
    model = wrapped()
    modules = bayesian_modules(model)
    with sampling(model, False):
        assert not any(m.sampling for m in modules)
        with sampling_only(model, lambda m: m is modules[0]):
            assert [m.sampling for m in modules] == [True] + [False] * (len(modules) - 1)
        assert not any(m.sampling for m in modules)
    assert all(m.sampling for m in modules)


def test_anatomy_and_kl():
    model = wrapped()
    assert len(decoder_layers(model)) == 2
    assert output_head(model) is model.get_base_model().lm_head
    assert layer_index("base_model.model.model.layers.1.self_attn.q_proj.lora_A.default") == 1
    assert layer_index("lm_head") is None
    kl = total_kl(model)
    assert kl.dtype == torch.float32 and kl.item() > 0
    assert total_kl(make_tiny_llama()).item() == 0.0
    with pytest.raises(ValueError, match="decoder layer stack"):
        decoder_layers(torch.nn.Linear(2, 2))
