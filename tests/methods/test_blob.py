"""BLoB (DESIGN §2): the KL against torch.distributions, the flipout noise's variance, the init."""

from __future__ import annotations

import math

import torch
from conftest import make_tiny_llama
from torch.distributions import Normal, kl_divergence

from scalabl.bayesian import bayesian_modules, total_kl, variational_parameters
from scalabl.methods import MethodConfig
from scalabl.methods.blob import BLoB, BlobA


def blob_module(rank: int = 3, fan_in: int = 5, seed: int = 0, **kwargs) -> BlobA:
    torch.manual_seed(seed)
    return BlobA(torch.randn(rank, fan_in), torch.rand(rank, fan_in) + 0.2, **kwargs)


def test_kl_matches_torch_distributions_for_both_directions():
    m = blob_module(prior_std=0.2)
    q = Normal(m.weight.detach(), m.rho.detach() ** 2)
    p = Normal(torch.zeros_like(m.weight), 0.2 * torch.ones_like(m.weight))
    assert torch.allclose(m.kl(), kl_divergence(q, p).sum(), rtol=1e-5)
    m.kl_direction = "reference"
    assert torch.allclose(m.kl(), kl_divergence(p, q).sum(), rtol=1e-5)


def test_flipout_output_has_the_posterior_variance():
    """Var[(A~ x)_i] = sum_j x_j^2 sigma_ij^2 for a sample A~ ~ N(M, sigma^2): Monte Carlo over draws."""
    m = blob_module(rank=3, fan_in=5)
    x = torch.randn(5)
    rows, draws = 8, 6000  # rows of one draw share E (uncorrelated, not independent): many draws
    n = rows * draws
    gen = torch.Generator().manual_seed(0)
    outs = []
    with torch.no_grad():
        for _ in range(draws):
            m.draw_noise(rows, gen)  # one flipout sample per row
            outs.append(m(x.expand(rows, 5)))
            m.clear_noise()
    out = torch.cat(outs)
    expected_mean = m.weight.detach() @ x
    expected_var = (x**2 * m.std.detach() ** 2).sum(-1)
    assert torch.allclose(
        out.mean(0), expected_mean, atol=5 * expected_var.sqrt().max().item() / math.sqrt(n)
    )
    assert torch.allclose(out.var(0), expected_var, rtol=0.05)


def test_flipout_rows_follow_select_noise_and_shared_mode_has_one_sample():
    m = blob_module()
    x = torch.randn(4, 5)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        m.draw_noise(2, gen)
        m.select_noise(torch.tensor([0, 0, 1, 1]))
        out = m(torch.cat([x[:1], x[:1], x[1:2], x[1:2]]))
        assert torch.equal(out[0], out[1]) and torch.equal(out[2], out[3])
        shared = blob_module(noise="shared")
        shared.draw_noise(4, gen)
        same = shared(x[:1].expand(4, 5))
        assert torch.allclose(same, same[:1].expand(4, 3))


def test_posterior_mean_mode_and_sigma_is_rho_squared():
    m = blob_module()
    x = torch.randn(2, 5)
    m.sampling = False
    assert torch.equal(m(x), x @ m.weight.T)
    assert torch.equal(m.std, m.rho.float() ** 2)


def test_wrapping_initialises_rho_in_range_and_keeps_the_lora_init():
    cfg = MethodConfig(method="blob", rank=4, sigma_init=0.05)
    model = BLoB(cfg).wrap(make_tiny_llama())
    mods = bayesian_modules(model)
    assert len(mods) == 4
    for m in mods:
        assert m.rho.min() >= 0.05 / math.sqrt(2) - 1e-7 and m.rho.max() <= 0.05
        assert m.prior_std == 0.2  # BLoB's prior by default
    # weight and rho are the variational parameters (the KL acts on both)
    assert len(variational_parameters(model)) == 8
    assert total_kl(model).dtype == torch.float32
