"""IVON: the optimiser's state holds the posterior, sampling draws from it (checked against IVON's
formula by hand), the mean comes back after every sample, and the step bound is ivon-opt's."""

from __future__ import annotations

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama, toy_examples
from ivon import IVON

from scalabl.api import BayesianLoRA
from scalabl.methods import MethodConfig
from scalabl.methods.base import sample_seed

TRAIN = toy_examples(8)
ESS = 1e4  # small, so that the samples are far enough from the mean to measure


def ivon(**kw) -> BayesianLoRA:
    config = MethodConfig(method="ivon", rank=4, ivon_ess=ESS, ivon_lr=0.5, **kw)
    return BayesianLoRA(make_tiny_llama(), make_byte_tokenizer(), config, seed=0)


def trainable(blora: BayesianLoRA) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in blora.model.parameters() if p.requires_grad]).clone()


def test_training_runs_ivon_and_its_state_is_the_posterior():
    blora = ivon()
    before = trainable(blora)
    blora.fit(TRAIN, steps=4, batch_size=4, weight_decay=1e-3, progress=False)
    opt = blora.method.optimizer
    assert isinstance(opt, IVON) and opt.current_step == 4
    hess = opt.param_groups[0]["hess"]
    assert hess.numel() == before.numel() and not torch.allclose(hess, torch.full_like(hess, 3e-4))
    assert not torch.equal(trainable(blora), before)  # the mean moved
    expected = 1.0 / torch.sqrt(ESS * (hess + 1e-3))  # IVON's posterior std, by hand
    assert torch.allclose(blora.method.posterior_std(blora.model), expected)


def test_a_sample_is_the_mean_plus_ivons_noise_and_the_mean_comes_back():
    blora = ivon()
    blora.fit(TRAIN, steps=3, batch_size=4, progress=False)
    mean = trainable(blora)
    std = blora.method.posterior_std(blora.model)
    with blora.method.posterior_sample(blora.model, 2, [], 5, torch.Generator()):
        theta = trainable(blora)
    # IVON's draw, reproduced: one standard normal vector from the global RNG seeded for (5, 2)
    torch.manual_seed(sample_seed(5, 2))
    eps = torch.randn(mean.numel())
    assert torch.allclose(theta, mean + eps * std, atol=1e-7)
    z = (theta - mean) / std
    assert abs(z.mean().item()) < 0.1 and abs(z.std().item() - 1.0) < 0.1
    assert torch.equal(trainable(blora), mean)


def test_sample_k_is_one_network_and_the_callers_rng_is_untouched():
    blora = ivon()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    draws = []
    for _ in range(2):
        with blora.method.posterior_sample(blora.model, 1, [], 0, torch.Generator()):
            draws.append(trainable(blora))
    with blora.method.posterior_sample(blora.model, 2, [], 0, torch.Generator()):
        other = trainable(blora)
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], other)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_larger_effective_sample_size_narrows_the_posterior():
    spreads = []
    for ess in (1e4, 1e6):
        config = MethodConfig(method="ivon", rank=4, ivon_ess=ess)
        blora = BayesianLoRA(make_tiny_llama(), make_byte_tokenizer(), config, seed=0)
        mean = trainable(blora)
        with blora.method.posterior_sample(blora.model, 0, [], 0, torch.Generator()):
            spreads.append((trainable(blora) - mean).std().item())
    assert spreads[0] / spreads[1] == pytest.approx(10.0, rel=1e-4)  # std ~ 1/sqrt(ess)


def test_each_step_moves_a_weight_by_at_most_lr_times_the_clip_radius():
    blora = ivon(ivon_clip_radius=1e-3)
    before = trainable(blora)
    blora.fit(TRAIN, steps=1, batch_size=4, warmup_ratio=0.0, progress=False)
    # the first step's preconditioned gradient is far above the radius: every weight moves the bound
    assert (trainable(blora) - before).abs().max().item() == pytest.approx(0.5 * 1e-3, rel=1e-4)


def test_several_training_samples_average_their_gradients():
    one, two = ivon(), ivon(ivon_train_samples=2)
    h1 = one.fit(TRAIN, steps=2, batch_size=4, log_every=1, progress=False)
    h2 = two.fit(TRAIN, steps=2, batch_size=4, log_every=1, progress=False)
    assert not torch.equal(trainable(one), trainable(two))
    assert h1[0]["nll"] != h2[0]["nll"]  # the mean NLL over two samples of the same batch


def test_saved_adapter_holds_the_hessian_and_the_prior_precision(tmp_path):
    blora = ivon()
    blora.fit(TRAIN, steps=2, batch_size=4, weight_decay=1e-3, progress=False)
    state = blora.method.adapter_state(blora.model)
    assert torch.equal(state["ivon.hess"], blora.method.optimizer.param_groups[0]["hess"])
    assert state["ivon.weight_decay"].item() == pytest.approx(1e-3)
    del state["ivon.hess"]
    fresh = ivon()
    with pytest.raises(ValueError, match="ivon.hess"):
        fresh.method.load_adapter_state(fresh.model, state, "adapter.safetensors")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("ivon_ess", 0.0, "ivon_ess"),
        ("ivon_beta2", 1.5, "ivon_beta2"),
        ("ivon_train_samples", 0, "ivon_train_samples"),
    ],
)
def test_bad_ivon_settings_are_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        MethodConfig(method="ivon", **{field: value})
