"""Prediction (DESIGN §1): the Bayesian model average in float64 log space and predict_log_proba."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama, predicted

from scalabl.bayesian import lora_layers
from scalabl.examples import Example
from scalabl.methods import MethodConfig, get_method
from scalabl.predict import bayesian_model_average
from scalabl.scoring import Scorer

EXAMPLES = [
    Example("p0", "Which is warm?", ("sun", "snow"), 0),
    Example("p1", "What do plants need to grow?", ("water", "light and air", "rocks"), 1),
    Example("p2", "Pick one.", ("a", "bb", "ccc", "dd"), 2),
]


def _wrapped(method: str) -> torch.nn.Module:
    """The tiny Llama with ``method``'s adapter, r = 4, and a random nonzero B (samples differ)."""
    model = get_method(MethodConfig(method=method, rank=4, sigma_init=0.5)).wrap(make_tiny_llama())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            w = layer.lora_B["default"].weight
            w.copy_(0.3 * torch.randn(w.shape, generator=g))
    return model


@pytest.fixture
def model():
    return _wrapped("scalabl")


# ---- bayesian_model_average --------------------------------------------------------------------------
def test_bma_matches_hand_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 3, 5))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = np.log(np.exp(log_probs).mean(axis=0))
    got = bayesian_model_average(torch.tensor(log_probs, dtype=torch.float32))
    assert got.dtype == torch.float64 and got.shape == (3, 5)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(np.exp(got.numpy()).sum(-1), 1.0, atol=1e-6)
    # One sample: the average is that sample.
    np.testing.assert_allclose(bayesian_model_average(torch.tensor(log_probs[:1])).numpy(), log_probs[0])


def test_bma_is_exact_for_very_negative_log_probs():
    lp = torch.tensor([[[-1000.0, -1001.0]], [[-1002.0, -1000.0]]], dtype=torch.float64)  # [S=2, N=1, C=2]
    assert np.all(np.exp(lp.numpy()) == 0.0), "naive exp underflows here"
    got = bayesian_model_average(lp)
    assert torch.isfinite(got).all()
    # log((e^a + e^b) / 2) = max + log((1 + e^(min-max)) / 2)
    expected = np.array(
        [[-1000.0 + np.log((1 + np.exp(-2.0)) / 2), -1000.0 + np.log((1 + np.exp(-1.0)) / 2)]]
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)


def test_bma_keeps_absent_choices_at_minus_inf():
    lp = torch.log(torch.tensor([[[0.3, 0.7, 0.0]], [[0.5, 0.5, 0.0]]]))
    got = bayesian_model_average(lp)
    assert torch.isneginf(got[0, 2])
    torch.testing.assert_close(got[0, :2].exp(), torch.tensor([0.4, 0.6], dtype=torch.float64))


# ---- predict_samples ------------------------------------------------------------------------------------
def assert_log_distributions(lp: torch.Tensor) -> None:
    assert lp.dtype == torch.float64
    torch.testing.assert_close(torch.logsumexp(lp, dim=-1), torch.zeros(lp.shape[:-1], dtype=torch.float64))


def test_posterior_mean_prediction(model, tokenizer):
    scorer = Scorer(tokenizer)
    model.train()
    first = predicted(model, scorer, EXAMPLES, n_samples=0, batch_size=3)
    assert model.training, "predict must restore the training flag"
    second = predicted(model, scorer, EXAMPLES, n_samples=0, batch_size=3)
    assert first.shape == (3, 4)
    assert_log_distributions(first)
    assert torch.equal(first, second), "n_samples=0 must be deterministic"
    assert torch.isneginf(first[0, 2:]).all() and torch.isneginf(first[1, 3])
    model.eval()
    with torch.no_grad():
        mean_logits = scorer.class_logits(model, EXAMPLES, sample=False)
    torch.testing.assert_close(first, torch.log_softmax(mean_logits.double(), dim=-1), atol=1e-9, rtol=0)
    # Other batchings change only the padding, not the answer.
    rebatched = predicted(model, scorer, EXAMPLES, n_samples=0, batch_size=2)
    torch.testing.assert_close(rebatched, first, atol=1e-4, rtol=0)


def test_sampled_prediction_is_reproducible_and_averages_its_samples(model, tokenizer):
    scorer = Scorer(tokenizer)
    n = 3
    avg, samples = predicted(model, scorer, EXAMPLES, n_samples=n, seed=5, return_samples=True)
    again = predicted(model, scorer, EXAMPLES, n_samples=n, seed=5)
    other = predicted(model, scorer, EXAMPLES, n_samples=n, seed=6)
    mean = predicted(model, scorer, EXAMPLES, n_samples=0)
    assert avg.shape == (3, 4) and samples.shape == (n, 3, 4)
    assert_log_distributions(avg)
    assert_log_distributions(samples)
    torch.testing.assert_close(avg, again, atol=0, rtol=0)
    torch.testing.assert_close(avg, bayesian_model_average(samples), atol=1e-12, rtol=0)
    finite = torch.isfinite(avg)
    assert not torch.allclose(avg[finite], other[finite]), "a different seed must give different samples"
    assert not torch.allclose(avg[finite], mean[finite]), "samples must differ from the posterior mean"
    assert not torch.allclose(samples[0][finite], samples[1][finite]), "the S samples must differ"


def test_posterior_mean_returns_one_sample_row(model, tokenizer):
    avg, samples = predicted(model, Scorer(tokenizer), EXAMPLES, n_samples=0, return_samples=True)
    assert samples.shape == (1, 3, 4)
    torch.testing.assert_close(avg, samples[0])


def test_samples_run_as_one_batch_match_the_loop(model, tokenizer):
    """S copies in one forward: with S = 1 it is the loop exactly; with S > 1 the copies are distinct samples."""
    scorer = Scorer(tokenizer)
    one_loop = predicted(model, scorer, EXAMPLES, n_samples=1, seed=3, batch_size=2)
    one_batched = predicted(model, scorer, EXAMPLES, n_samples=1, seed=3, batch_size=2, batch_samples=True)
    torch.testing.assert_close(one_batched, one_loop, atol=1e-6, rtol=0)

    avg, samples = predicted(
        model, scorer, EXAMPLES, n_samples=4, seed=3, batch_samples=True, return_samples=True
    )
    assert samples.shape == (4, 3, 4)
    assert_log_distributions(avg)
    torch.testing.assert_close(avg, bayesian_model_average(samples), atol=1e-12, rtol=0)
    finite = torch.isfinite(samples[0])
    assert all(not torch.allclose(samples[0][finite], samples[k][finite]) for k in range(1, 4))
    # Each copy is one posterior sample of the same model: on a posterior with tiny sigma all agree.
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "log_sigma"):
                m.log_sigma.fill_(-30.0)
    tight = predicted(model, scorer, EXAMPLES, n_samples=4, batch_samples=True)
    torch.testing.assert_close(tight, predicted(model, scorer, EXAMPLES, n_samples=0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["blob", "tfb"])
def test_flipout_samples_are_separate_draws_even_when_batched(method):
    """Flipout's rows of one draw share a Gaussian: batching S copies would correlate the samples,
    so batch_samples takes the S-draw loop for them (the same probabilities as without it)."""
    model = get_method(MethodConfig(method=method, rank=2)).wrap(make_tiny_llama())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        for m in model.modules():
            if hasattr(m, "beta"):
                m.beta.fill_(0.5)
    scorer = Scorer(make_byte_tokenizer())
    kw = dict(n_samples=3, batch_size=2, seed=4, return_samples=True)
    _, loop = predicted(model, scorer, EXAMPLES, batch_samples=False, **kw)
    _, batched = predicted(model, scorer, EXAMPLES, batch_samples=True, **kw)
    assert torch.equal(loop, batched)
    assert not torch.allclose(loop[0], loop[1]), "the samples must differ"


# ---- per-question noise: a prediction that does not depend on its batch ---------------------------
@pytest.mark.parametrize("method", ["scalabl", "blob", "mcdropout"])
def test_per_question_noise_gives_each_question_its_prediction_in_any_batch(method, tokenizer):
    model, scorer = _wrapped(method), Scorer(tokenizer)
    many = [*EXAMPLES, Example("p3", "Another?", ("yes", "no"), 0)]

    def padded(lp: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(lp, (0, 4 - lp.shape[1]), value=float("-inf"))

    alone = torch.cat(
        [padded(predicted(model, scorer, [e], n_samples=3, per_question=True)) for e in many[:3]]
    )
    for batch_size in (1, 2, 4):
        for batch_samples in (False, True):
            together = predicted(
                model,
                scorer,
                many,
                n_samples=3,
                per_question=True,
                batch_size=batch_size,
                batch_samples=batch_samples,
            )
            assert torch.allclose(together[:3, : alone.shape[1]], alone, atol=1e-5), (
                batch_size,
                batch_samples,
            )
    # the same question in another position, under another id: the same prediction
    moved = [many[3], Example("other-id", *[getattr(many[1], f) for f in ("question", "choices", "label")])]
    again = predicted(model, scorer, moved, n_samples=3, per_question=True, batch_size=2)
    assert torch.allclose(again[1, :3], alone[1, :3], atol=1e-5)
    # it is a posterior average: other seeds give other samples
    other = predicted(model, scorer, many[:3], n_samples=3, per_question=True, seed=1)
    assert not torch.allclose(other[:, : alone.shape[1]], alone, atol=1e-4)
