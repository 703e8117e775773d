"""ScalaBL's variants: shared noise across modules, a full covariance over the r dims, and the
empirical-Bayes prior; each checked against an independent computation."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama
from torch.distributions import MultivariateNormal, kl_divergence

from scalabl.bayesian import bayesian_modules, draw_noise, layer_index, total_kl
from scalabl.config import MethodConfig
from scalabl.methods.scalabl import ScalaBL, SubspaceA, full_gaussian_kl, gaussian_kl

RANK = 4


def wrapped(**options):
    method = ScalaBL(MethodConfig(method="scalabl", rank=RANK, **options))
    return method, method.wrap(make_tiny_llama())


def random_posterior(model, seed: int = 0) -> None:
    """Spread mu, sigma and the Cholesky factor so that no test passes by symmetry."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in bayesian_modules(model):
            m.log_mu.copy_(0.5 * torch.randn(m.rank, generator=g))
            m.log_sigma.copy_(-1.0 + 0.5 * torch.randn(m.rank, generator=g))
            if m.tril_off is not None:
                m.tril_off.copy_(0.3 * torch.randn(m.tril_off.shape, generator=g))


def random_tril(r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tril = torch.tril(torch.randn(r, r, generator=g), -1) + torch.diag(torch.rand(r, generator=g) + 0.2)
    return torch.randn(r, generator=g), tril


@pytest.mark.parametrize("prior_var", [0.25, 1.0, 3.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_full_gaussian_kl_matches_torch_distributions(prior_var, seed):
    mu, tril = random_tril(5, seed)
    q = MultivariateNormal(mu.double(), scale_tril=tril.double())
    p = MultivariateNormal(torch.zeros(5, dtype=torch.float64), prior_var * torch.eye(5, dtype=torch.float64))
    assert full_gaussian_kl(mu, tril, prior_var).item() == pytest.approx(kl_divergence(q, p).item(), rel=1e-5)
    assert full_gaussian_kl(mu, tril, prior_var, "reference").item() == pytest.approx(
        kl_divergence(p, q).item(), rel=1e-5
    )


def test_a_diagonal_factor_gives_the_diagonal_kl():
    mu, sigma = torch.randn(6), torch.rand(6) + 0.1
    for direction in ("correct", "reference"):
        assert full_gaussian_kl(mu, torch.diag(sigma), 0.7**2, direction).item() == pytest.approx(
            gaussian_kl(mu, sigma, 0.7, direction).item(), rel=1e-6
        )


def test_full_covariance_samples_have_the_posterior_covariance():
    torch.manual_seed(0)
    _, model = wrapped(covariance="full")
    random_posterior(model)
    m = bayesian_modules(model)[0]
    # P has orthonormal rows (from the SVD): x = P^T 1 gives P x = 1, so the forward returns s itself
    x = m.P.detach().T @ torch.ones(m.rank)
    n = 40_000
    m.draw_noise(n, torch.Generator().manual_seed(1))
    s = m(x.expand(n, -1)).detach().double()
    tril = m.scale_tril.detach().double()
    assert torch.allclose(s.mean(0), m.mu.detach().double(), atol=0.02)
    assert torch.allclose(torch.cov(s.T), tril @ tril.T, atol=0.02)
    assert torch.allclose(m.marginal_std.detach().double() ** 2, torch.diagonal(tril @ tril.T), atol=1e-6)


def test_full_covariance_starts_as_the_diagonal_posterior_and_counts_its_parameters():
    method, model = wrapped(covariance="full")
    modules = bayesian_modules(model)
    assert all(torch.equal(m.scale_tril, torch.diag(m.sigma)) for m in modules)
    per_module = 2 * RANK + RANK * (RANK - 1) // 2
    assert method.extra_parameters(model) == len(modules) * per_module
    assert all(any(p is m.tril_off for p in m.variational_parameters()) for m in modules)


def test_module_prior_fit_is_the_kl_at_the_optimal_prior_variance():
    _, model = wrapped(prior_fit="module")
    random_posterior(model)
    for m in bayesian_modules(model):
        mu, sigma = m.mu.detach(), m.sigma.detach()
        best = ((mu**2 + sigma**2).mean()).sqrt().item()
        assert m.kl().item() == pytest.approx(gaussian_kl(mu, sigma, best).item(), rel=1e-5)
        # type-II ML: no other prior std gives a smaller KL (a larger ELBO)
        assert all(
            m.kl().item() <= gaussian_kl(mu, sigma, best * f).item() + 1e-6 for f in (0.5, 0.9, 1.1, 2)
        )
        assert m.stats()["prior_std"] == pytest.approx(best, rel=1e-5)


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_model_prior_fit_pools_one_variance_over_the_adapter(covariance):
    _, model = wrapped(prior_fit="model", covariance=covariance)
    random_posterior(model)
    modules = bayesian_modules(model)
    moment = sum(
        (m.scale_tril.detach().double() ** 2).sum() + (m.mu.detach().double() ** 2).sum() for m in modules
    )
    var = (moment / (RANK * len(modules))).item()

    def kl_at(v: float) -> float:
        return sum(full_gaussian_kl(m.mu.detach(), m.scale_tril.detach(), v).item() for m in modules)

    assert total_kl(model).item() == pytest.approx(kl_at(var), rel=1e-5)
    assert all(kl_at(var) <= kl_at(var * f) + 1e-5 for f in (0.5, 0.9, 1.1, 2.0))


def test_empirical_bayes_needs_the_correct_kl_direction():
    with pytest.raises(ValueError, match="prior_fit"):
        MethodConfig(method="scalabl", prior_fit="model", kl_direction="reference")


def _noise_by_layer(model) -> list[tuple[int | None, torch.Tensor]]:
    return [(layer_index(n), m._xi) for n, m in model.named_modules() if isinstance(m, SubspaceA)]


def test_layer_noise_is_one_draw_per_layer_and_adapter_noise_one_for_all():
    _, layer_model = wrapped(noise_sharing="layer")
    draw_noise(layer_model, 3, torch.Generator().manual_seed(0))
    noise = _noise_by_layer(layer_model)
    assert len(noise) == 4 and {i for i, _ in noise} == {0, 1}
    for i, xi in noise:
        assert xi.shape == (3, RANK)
        for j, other in noise:
            assert torch.equal(xi, other) == (i == j)

    _, adapter_model = wrapped(noise_sharing="adapter")
    draw_noise(adapter_model, 3, torch.Generator().manual_seed(0))
    first = _noise_by_layer(adapter_model)[0][1]
    assert all(torch.equal(xi, first) for _, xi in _noise_by_layer(adapter_model))
    # the shared draw is the first module's, as an independent draw would have made it
    assert torch.equal(first, noise[0][1])


def test_module_noise_draws_as_before():
    """Independent noise (the paper's) draws each module in order from the generator, as it always did:
    earlier runs keep their samples."""
    _, model = wrapped()
    draw_noise(model, 2, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    expected = [torch.randn(2, RANK, generator=g) for _ in bayesian_modules(model)]
    assert all(torch.equal(m._xi, e) for m, e in zip(bayesian_modules(model), expected, strict=True))


def test_shared_noise_makes_the_modules_perturbations_move_together():
    """The mechanism the variant is for: with one draw per layer, q's and v's deviations from their
    means are perfectly correlated coordinate by coordinate; independently drawn, they are not."""
    for sharing, correlated in (("layer", True), ("module", False)):
        _, model = wrapped(noise_sharing=sharing)
        draw_noise(model, 2000, torch.Generator().manual_seed(0))
        q, v = [m for n, m in model.named_modules() if isinstance(m, SubspaceA) and layer_index(n) == 0]
        dq = (q.sigma * q._xi).detach()
        dv = (v.sigma * v._xi).detach()
        corr = torch.corrcoef(torch.stack([dq[:, 0], dv[:, 0]]))[0, 1].item()
        assert (corr > 0.999) if correlated else (abs(corr) < 0.1)
