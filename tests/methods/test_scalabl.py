"""ScalaBL (DESIGN §1): the KL, the SVD initialisation, the noise, the parameter count and merging."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_llama
from torch import nn
from torch.distributions import Normal, kl_divergence

from scalabl.bayesian import bayesian_modules, draw_noise, lora_layers, sampling
from scalabl.methods import MethodConfig, get_method
from scalabl.methods.mle import MLE
from scalabl.methods.scalabl import ScalaBL, SubspaceA, gaussian_kl

RANK = 4


def scalabl_config(**kwargs) -> MethodConfig:
    return MethodConfig(**{"method": "scalabl", "rank": RANK, **kwargs})


def wrap_scalabl(random_b: bool = True, seed: int = 0, **kwargs):
    model = ScalaBL(scalabl_config(**kwargs)).wrap(make_tiny_llama(seed=seed))
    if random_b:
        randomise_b(model, seed)
    return model


def randomise_b(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            w = layer.lora_B["default"].weight
            w.copy_(0.3 * torch.randn(w.shape, generator=g))


def subspace_modules(model: nn.Module) -> list[SubspaceA]:
    mods = bayesian_modules(model)
    assert mods and all(isinstance(m, SubspaceA) for m in mods)
    return mods


def input_ids(batch: int = 2, length: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 257, (batch, length), generator=g)


# ---- KL ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prior_std", [0.5, 1.0, 2.0])
def test_gaussian_kl_matches_torch_distributions(prior_std):
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(13, generator=g)
    sigma = torch.rand(13, generator=g) * 1.5 + 0.05
    prior = Normal(torch.zeros(13), torch.full((13,), prior_std))
    q = Normal(mu, sigma)
    expected_correct = kl_divergence(q, prior).sum()
    expected_reference = kl_divergence(prior, q).sum()
    torch.testing.assert_close(gaussian_kl(mu, sigma, prior_std), expected_correct)
    torch.testing.assert_close(gaussian_kl(mu, sigma, prior_std, "correct"), expected_correct)
    torch.testing.assert_close(gaussian_kl(mu, sigma, prior_std, "reference"), expected_reference)
    assert not torch.allclose(expected_correct, expected_reference)


@pytest.mark.parametrize("direction", ["correct", "reference"])
def test_gaussian_kl_is_float32_for_bfloat16_inputs(direction):
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(8, generator=g).bfloat16()
    sigma = (torch.rand(8, generator=g) + 0.1).bfloat16()
    kl = gaussian_kl(mu, sigma, 1.0, direction)
    assert kl.dtype == torch.float32
    q, p = Normal(mu.float(), sigma.float()), Normal(torch.zeros(8), torch.ones(8))
    expected = (kl_divergence(q, p) if direction == "correct" else kl_divergence(p, q)).sum()
    torch.testing.assert_close(kl, expected)


def test_gaussian_kl_bad_direction():
    with pytest.raises(ValueError, match="kl_direction"):
        gaussian_kl(torch.zeros(2), torch.ones(2), 1.0, "backwards")


def test_module_kl_uses_configured_direction_and_prior():
    model = wrap_scalabl(prior_std=2.0, kl_direction="reference")
    m = subspace_modules(model)[0]
    q = Normal(m.mu.detach(), m.sigma.detach())
    p = Normal(torch.zeros(RANK), torch.full((RANK,), 2.0))
    torch.testing.assert_close(m.kl().detach(), kl_divergence(p, q).sum())


# ---- initialisation ------------------------------------------------------------------------------
def test_subspace_init_from_lora_weight():
    torch.manual_seed(0)
    a = nn.Linear(24, RANK, bias=False).weight.detach()  # the standard LoRA-A (Kaiming-uniform) init
    eps = 0.05
    m = SubspaceA.from_lora_weight(a, eps)
    p = m.P.detach()
    assert p.shape == (RANK, 24) and m.log_mu.shape == (RANK,) and m.log_sigma.shape == (RANK,)
    torch.testing.assert_close(p @ p.T, torch.eye(RANK), atol=1e-5, rtol=0)
    s = torch.linalg.svdvals(a)
    torch.testing.assert_close(m.mu.detach(), s)
    torch.testing.assert_close(torch.linalg.svdvals(m.weight.detach()), s)
    # The posterior-mean A spans the same row space as the original A.
    proj = p.T @ p
    torch.testing.assert_close(a @ proj, a, atol=1e-5, rtol=0)
    sigma = m.sigma.detach()
    assert torch.all(sigma >= eps / math.sqrt(2) - 1e-7) and torch.all(sigma <= eps + 1e-7)


def test_wrap_replaces_every_lora_a_from_the_same_lora_init():
    """ScalaBL's subspace comes from the very LoRA-A init peft draws (same seed -> same A)."""
    cfg = dict(rank=RANK, target_modules=("q_proj", "v_proj"))
    lora = MLE(MethodConfig(method="mle", **cfg)).wrap(make_tiny_llama())
    bayes = ScalaBL(MethodConfig(method="scalabl", sigma_init=0.1, **cfg)).wrap(make_tiny_llama())
    plain = dict(lora_layers(lora))
    layers = dict(lora_layers(bayes))
    assert len(layers) == 4 and plain.keys() == layers.keys()
    for name, layer in layers.items():
        sub = layer.lora_A["default"]
        assert isinstance(sub, SubspaceA)
        a = plain[name].lora_A["default"].weight.detach()
        torch.testing.assert_close(sub.mu.detach(), torch.linalg.svdvals(a))
        torch.testing.assert_close(torch.linalg.svdvals(sub.weight.detach()), torch.linalg.svdvals(a))
        sigma = sub.sigma.detach()
        assert torch.all(sigma >= 0.1 / math.sqrt(2) - 1e-7) and torch.all(sigma <= 0.1 + 1e-7)
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0


def test_initial_model_equals_base_model():
    x = input_ids()
    with torch.no_grad():
        base = make_tiny_llama()(x).logits
        wrapped = wrap_scalabl(random_b=False)
        sampled = wrapped(input_ids=x).logits
    torch.testing.assert_close(sampled, base)


# ---- forward ---------------------------------------------------------------------------------------
def test_layer_forward_with_zero_sigma_is_lora_with_mean_a():
    model = wrap_scalabl()
    name, layer = next(iter(lora_layers(model)))
    sub = layer.lora_A["default"]
    with torch.no_grad():
        sub.log_sigma.fill_(-30.0)
    x = torch.randn(3, 5, sub.in_features)
    a = sub.mu.detach()[:, None] * sub.P.detach()
    b = layer.lora_B["default"].weight.detach()
    expected = layer.base_layer(x) + layer.scaling["default"] * (x @ a.T @ b.T)
    with torch.no_grad(), sampling(model, True):
        got = layer(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_model_forward_with_zero_sigma_equals_plain_lora():
    bayes = wrap_scalabl()
    lora = MLE(MethodConfig(method="mle", rank=RANK)).wrap(make_tiny_llama())
    plain = dict(lora_layers(lora))
    with torch.no_grad():
        for name, layer in lora_layers(bayes):
            sub = layer.lora_A["default"]
            sub.log_sigma.fill_(-30.0)
            plain[name].lora_A["default"].weight.copy_(sub.mu[:, None] * sub.P)
            plain[name].lora_B["default"].weight.copy_(layer.lora_B["default"].weight)
    x = input_ids(batch=3)
    with torch.no_grad():
        expected = lora(input_ids=x).logits
        with sampling(bayes, True):
            got = bayes(input_ids=x).logits
        with sampling(bayes, False):
            mean = bayes(input_ids=x).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean, expected, atol=1e-5, rtol=1e-5)


def test_posterior_mean_mode_is_deterministic():
    model = wrap_scalabl(sigma_init=0.5)
    x = input_ids()
    with torch.no_grad(), sampling(model, False):
        first = model(input_ids=x).logits
        second = model(input_ids=x).logits
    assert torch.equal(first, second)
    # ... and it is the forward with s = mu (no noise) at every layer.
    for m in subspace_modules(model):
        with torch.no_grad():
            m.log_sigma.fill_(-30.0)
    with torch.no_grad(), sampling(model, True):
        zero_noise = model(input_ids=x).logits
    torch.testing.assert_close(first, zero_noise, atol=1e-5, rtol=1e-5)


def test_sampling_forward_differs_from_the_mean():
    model = wrap_scalabl(sigma_init=0.5)
    x = input_ids()
    with torch.no_grad():
        with sampling(model, False):
            mean = model(input_ids=x).logits
        with sampling(model, True):
            a = model(input_ids=x).logits
            b = model(input_ids=x).logits
    assert not torch.allclose(a, mean) and not torch.allclose(a, b)


@pytest.mark.parametrize("explicit_draw", [False, True])
def test_per_sequence_noise(explicit_draw):
    x = input_ids(batch=1).repeat(4, 1)  # four identical rows
    outputs = {}
    for noise in ("sequence", "shared"):
        model = wrap_scalabl(sigma_init=0.5, noise=noise)
        with torch.no_grad(), sampling(model, True):
            if explicit_draw:
                draw_noise(model, 4, torch.Generator().manual_seed(0))
            outputs[noise] = model(input_ids=x).logits
    seq, shared = outputs["sequence"], outputs["shared"]
    for i in range(1, 4):
        assert not torch.allclose(seq[0], seq[i], atol=1e-4), "sequence noise must differ per row"
        assert torch.equal(shared[0], shared[i]), "shared noise must give identical rows"


def test_noise_rows_must_match_batch():
    model = wrap_scalabl()
    draw_noise(model, 3)
    with pytest.raises(RuntimeError, match="draw_noise with the batch size"), torch.no_grad():
        model(input_ids=input_ids(batch=2))


def test_draw_noise_with_generator_is_reproducible():
    model = wrap_scalabl(sigma_init=0.5)
    x = input_ids(batch=3)

    def run(seed: int) -> torch.Tensor:
        draw_noise(model, 3, torch.Generator().manual_seed(seed))
        with torch.no_grad(), sampling(model, True):
            return model(input_ids=x).logits

    first, again, other = run(7), run(7), run(8)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    mods = subspace_modules(model)
    assert all(m.noise_rows() is not None and m.noise_rows().shape == (3, RANK) for m in mods)


# ---- parameter counts ----------------------------------------------------------------------------
def n_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("targets", "n_modules"),
    [(("q_proj", "v_proj"), 4), (("q_proj", "v_proj", "lm_head"), 5)],
)
def test_extra_parameter_count(targets, n_modules):
    config = scalabl_config(target_modules=targets)
    method = ScalaBL(config)
    model = method.wrap(make_tiny_llama())
    assert len(list(lora_layers(model))) == n_modules
    assert method.extra_parameters(model) == 2 * RANK * n_modules

    mle_config = MethodConfig(method="mle", rank=RANK, target_modules=targets)
    mle = get_method(mle_config)
    lora = mle.wrap(make_tiny_llama())
    assert mle.extra_parameters(lora) == 0
    assert n_trainable(model) == n_trainable(lora) + 2 * RANK * n_modules
    # Only the adapter trains: the frozen base is untouched.
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n), (
        "base weights must stay frozen"
    )


# ---- merge and gradients -------------------------------------------------------------------------
def test_merge_and_unload_equals_posterior_mean():
    model = wrap_scalabl(sigma_init=0.5, target_modules=("q_proj", "v_proj", "lm_head"))
    x = input_ids(batch=2)
    with torch.no_grad(), sampling(model, False):
        mean = model(input_ids=x).logits
    merged = model.merge_and_unload()
    assert not bayesian_modules(merged)
    with torch.no_grad():
        got = merged(input_ids=x).logits
    torch.testing.assert_close(got, mean, atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter():
    model = wrap_scalabl(sigma_init=0.5)
    model.train()
    x = input_ids(batch=2)
    with sampling(model, True):
        out = model(input_ids=x, labels=x)
    loss = out.loss + 1e-3 * sum(m.kl() for m in subspace_modules(model))
    loss.backward()
    for name, layer in lora_layers(model):
        sub = layer.lora_A["default"]
        for pname, p in [
            ("log_mu", sub.log_mu),
            ("log_sigma", sub.log_sigma),
            ("P", sub.P),
            ("lora_B", layer.lora_B["default"].weight),
        ]:
            assert p.grad is not None, f"{name}.{pname}: no gradient"
            assert torch.count_nonzero(p.grad) > 0, f"{name}.{pname}: zero gradient"


def test_unmatched_target_modules_raise_from_wrap():
    method = ScalaBL(scalabl_config(target_modules=("no_such_proj",)))
    with pytest.raises(ValueError, match="target_modules"):
        method.wrap(make_tiny_llama())


def test_defaults_from_the_calibration_study():
    """No sigma_init / variational_lr given: ScalaBL's own defaults (docs/calibration-study.md)."""
    from scalabl.config import TrainConfig

    method = ScalaBL(MethodConfig(method="scalabl", rank=4))
    model = method.wrap(make_tiny_llama())
    sigma = torch.cat([m.sigma.detach() for m in bayesian_modules(model)])
    assert (sigma >= 0.5 / math.sqrt(2) - 1e-6).all() and (sigma <= 0.5 + 1e-6).all()
    assert method.train_config(TrainConfig()).variational_lr == 2e-2
    assert method.train_config(TrainConfig(variational_lr=1e-3)).variational_lr == 1e-3  # given wins
    assert MLE(MethodConfig(method="mle")).train_config(TrainConfig()).variational_lr is None
    explicit = ScalaBL(MethodConfig(method="scalabl", rank=4, sigma_init=0.05)).wrap(make_tiny_llama())
    assert max(m.sigma.max().item() for m in bayesian_modules(explicit)) <= 0.05 + 1e-6
