"""Laplace-LoRA through laplace-torch: KFAC and diagonal fits, marglik prior, LLLA subset, MC and GLM
predictives, MAP restored, save/load, and the curvature rescaled to the full training set."""

from __future__ import annotations

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama, toy_examples

laplace = pytest.importorskip("laplace")

from scalabl.api import BayesianLoRA  # noqa: E402
from scalabl.methods import MethodConfig  # noqa: E402

TRAIN = toy_examples(12)
TEST = toy_examples(5, seed=7, varied=True)


def fitted(calibrate: bool = True, **kw) -> BayesianLoRA:
    cfg = MethodConfig(**{"method": "laplace", "rank": 4, "laplace_max_train": 8, **kw})
    blora = BayesianLoRA(make_tiny_llama(), make_byte_tokenizer(), cfg, seed=0)
    blora.fit(TRAIN, steps=4, batch_size=4, lr=2e-2, progress=False)
    if calibrate:
        blora.calibrate([], train=TRAIN)
    return blora


def lora_state(blora: BayesianLoRA) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in blora.model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("hessian, cls", [("kron", "KronLaplace"), ("diag", "DiagLaplace")])
def test_fits_through_laplace_torch_with_a_marglik_prior(hessian, cls):
    blora = fitted(laplace_hessian=hessian)
    la = blora.method.la
    assert isinstance(la, laplace.baselaplace.BaseLaplace) and type(la).__name__ == cls
    facts = blora.fitted
    assert facts["prior_precision_initial"] == 1.0
    assert facts["prior_precision"] != pytest.approx(1.0)  # marglik moved it
    assert facts["posterior_parameters"] == la.n_params == sum(p.numel() for p in lora_state(blora).values())
    assert la.n_data == len(TRAIN)  # curvature from 8 examples, rescaled to the 12 of the loss
    assert facts["hessian_examples"] == 8
    expected = la.H.numel() if hessian == "diag" else sum(f.numel() for b in la.H_facs.kfacs for f in b)
    assert blora.extra_parameters == expected


def test_diag_curvature_is_rescaled_to_the_full_training_set():
    sub = fitted(laplace_hessian="diag")
    full = fitted(laplace_hessian="diag", laplace_max_train=12)
    # identical weights; H(8 examples) * 12/8 approximates H(12): same order, not equal; n_data equal
    assert sub.method.la.n_data == full.method.la.n_data == 12
    raw = fitted(laplace_hessian="diag", calibrate=False)
    raw.method.post_fit(raw.model, raw.scorer, train=TRAIN[:8], validation=[])
    assert torch.allclose(sub.method.la.H, raw.method.la.H * 12 / 8, rtol=1e-5)


def test_last_layer_covers_only_the_last_adapted_layer():
    full, last = fitted(), fitted(laplace_subset="last_layer", laplace_predictive="mc")
    names = [n for n, _ in last.method.posterior_parameters(last.model)]
    assert names and all(".layers.1." in n for n in names)
    assert last.fitted["posterior_parameters"] < full.fitted["posterior_parameters"]
    assert last.fitted["posterior_parameters"] == full.fitted["posterior_parameters"] // 2
    p = last.predict_proba(TEST, n_samples=3)
    assert torch.allclose(p.sum(-1), torch.ones(len(TEST), dtype=torch.float64))


def test_zero_samples_is_the_map_and_mc_sampling_restores_it():
    blora = fitted(laplace_predictive="mc")
    before = lora_state(blora)
    map_pred = blora.predict_log_proba(TEST, n_samples=0)
    a = blora.predict_log_proba(TEST, n_samples=3, seed=1)
    after = lora_state(blora)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(blora.predict_log_proba(TEST, n_samples=0), map_pred)
    assert torch.equal(a, blora.predict_log_proba(TEST, n_samples=3, seed=1))
    assert not torch.equal(a, blora.predict_log_proba(TEST, n_samples=3, seed=2))
    # requires_grad is back as training left it
    assert all(p.requires_grad for n, p in blora.model.named_parameters() if "lora_" in n)


def test_glm_is_the_default_predictive_sums_to_one_and_survives_save_load(tmp_path):
    blora = fitted()
    assert blora.config.laplace_predictive == "glm"
    lp = blora.predict_log_proba(TEST, n_samples=4)
    p = lp.exp()
    assert torch.allclose(p.sum(-1), torch.ones(len(TEST), dtype=torch.float64))
    for i, e in enumerate(TEST):
        assert torch.all(p[i, len(e.choices) :] == 0)
    assert not torch.allclose(lp, blora.predict_log_proba(TEST, n_samples=0))
    blora.save(tmp_path)
    loaded = BayesianLoRA.load(tmp_path, make_tiny_llama(), make_byte_tokenizer())
    assert torch.allclose(loaded.predict_log_proba(TEST, n_samples=4), lp, atol=1e-10)


def test_diag_save_load_and_sampling_before_calibrate(tmp_path):
    blora = fitted(laplace_hessian="diag", laplace_predictive="mc")
    blora.save(tmp_path)
    loaded = BayesianLoRA.load(tmp_path, make_tiny_llama(), make_byte_tokenizer())
    assert torch.equal(
        loaded.predict_log_proba(TEST, n_samples=3, seed=4),
        blora.predict_log_proba(TEST, n_samples=3, seed=4),
    )
    with pytest.raises(ValueError, match="no posterior fitted yet"):
        fitted(calibrate=False).predict_log_proba(TEST, n_samples=2)
