"""TFB (DESIGN §2): the SVD rotation keeps the model, the std is beta / S_i, the beta search meets its tolerance."""

from __future__ import annotations

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama, toy_examples

from scalabl.api import BayesianLoRA
from scalabl.bayesian import bayesian_modules
from scalabl.config import PredictConfig
from scalabl.methods import MethodConfig
from scalabl.methods.tfb import TFBA

TRAIN = toy_examples(12)
VALIDATION = toy_examples(8, seed=3)


def trained_tfb(**kwargs) -> BayesianLoRA:
    cfg = MethodConfig(method="tfb", rank=4, tfb_samples=2, tfb_search_steps=4, **kwargs)
    blora = BayesianLoRA(make_tiny_llama(), make_byte_tokenizer(), cfg, seed=0)
    blora.fit(TRAIN, steps=4, batch_size=4, lr=2e-2, progress=False)
    return blora


def delta_weights(blora: BayesianLoRA) -> list[torch.Tensor]:
    from scalabl.bayesian import lora_layers

    return [layer.get_delta_weight("default").detach().clone() for _, layer in lora_layers(blora.model)]


def test_training_is_plain_lora_and_the_rotation_keeps_the_product():
    blora = trained_tfb()
    assert all(float(m.beta) == 0 for m in bayesian_modules(blora.model))
    before = delta_weights(blora)
    lp_before = blora.predict_log_proba(VALIDATION, n_samples=0)
    blora.method.rotate(blora.model)
    for a, b in zip(before, delta_weights(blora), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(lp_before, blora.predict_log_proba(VALIDATION, n_samples=0), atol=1e-6)
    # after rotation B' = U S has orthogonal columns with norms S
    from scalabl.bayesian import lora_layers

    for _, layer in lora_layers(blora.model):
        b = layer.lora_B["default"].weight.detach()
        gram = b.T @ b
        assert torch.allclose(gram, torch.diag(layer.lora_A["default"].singular ** 2), atol=1e-5)


def test_std_is_beta_over_singular_value_per_row():
    m = TFBA(torch.randn(3, 5))
    m.singular.copy_(torch.tensor([2.0, 1.0, 0.0]))
    m.beta.fill_(0.4)
    assert torch.allclose(m.std[:, 0], torch.tensor([0.2, 0.4, 0.0]))
    assert m.std.shape == (3, 5)


@pytest.mark.parametrize("tolerance", [0.0, 0.05])
def test_beta_search_meets_its_tolerance(tolerance):
    blora = trained_tfb(tfb_tolerance=tolerance)
    facts = blora.calibrate(VALIDATION)
    base = facts["validation_nll_lora"]
    assert facts["validation_nll_at_beta"] <= base + tolerance + 1e-12
    # recompute the NLL at the chosen beta independently of the search's bookkeeping
    lp = blora.predict_log_proba(VALIDATION, n_samples=2, seed=0) if facts["beta"] > 0 else None
    if lp is not None:
        labels = torch.tensor([e.label for e in VALIDATION])
        nll = -lp.gather(1, labels[:, None]).mean().item()
        assert nll == pytest.approx(facts["validation_nll_at_beta"], abs=1e-9)
        assert nll <= base + tolerance + 1e-12
    # every beta the search rejected broke the tolerance; the chosen one is the largest accepted
    accepted = [s["beta"] for s in facts["search"] if s["nll"] <= base + tolerance]
    assert facts["beta"] == max(accepted)
    assert all(float(m.beta) == pytest.approx(facts["beta"], rel=1e-6) for m in bayesian_modules(blora.model))


def test_a_loose_tolerance_gives_a_larger_beta_and_more_spread():
    tight = trained_tfb(tfb_tolerance=0.001).calibrate(VALIDATION)["beta"]
    loose_model = trained_tfb(tfb_tolerance=0.5)
    loose = loose_model.calibrate(VALIDATION)["beta"]
    assert loose > tight > 0 or (tight == 0 and loose > 0)
    samples = loose_model.predict(VALIDATION, PredictConfig(n_samples=3)).samples
    assert not torch.allclose(samples[0], samples[1])


def test_empty_validation_is_refused():
    with pytest.raises(ValueError, match="validation"):
        trained_tfb().calibrate([])
