"""The contract every method keeps (build -> train -> post hoc -> predict -> save/load), on a tiny model.

Parametrised over the registry, so a new method is held to it the day it is registered, and over
ScalaBL's variants (options of the method).
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama, toy_examples

from scalabl.api import BayesianLoRA
from scalabl.config import PredictConfig
from scalabl.methods import METHODS, MethodConfig

RANK = 4
K = 2  # ensemble members (small for speed)
TRAIN = toy_examples(12, seed=0)
VALIDATION = toy_examples(6, seed=1)
TEST = toy_examples(5, seed=2, varied=True)  # 2-4 choices: absent choices must get probability 0

# Tiny Llama: hidden 32, 4 heads of 8, 2 KV heads -> q_proj 32->32, v_proj 32->16; 2 layers.
A_ENTRIES = 2 * 2 * RANK * 32  # entries of every LoRA A (4 modules, r x 32)
LORA = 2 * (RANK * 32 + 32 * RANK + RANK * 32 + 16 * RANK)  # one adapter, A and B
EXPECTED_EXTRA = {
    "mle": 0,
    "map": 0,
    "mcdropout": 0,
    "temperature": 0,
    "scalabl": 4 * 2 * RANK,  # mu and sigma of s per module
    "blob": A_ENTRIES,  # rho for every entry of A
    "tfb": 4 * (RANK + 1),  # singular values and beta per module
    "ensemble": (K - 1) * LORA,
    "ivon": LORA,  # a posterior variance (IVON's Hessian entry) per LoRA weight
    "blora_xs": 4 * (2 + 10) * RANK * RANK,  # SWAG's mean, second moment and K = 10 deviations per core
    "blora_xs/laplace": 4 * 2 * RANK * RANK,  # KFAC's two r x r factors per core
    "scalabl/full": 4 * (2 * RANK + RANK * (RANK - 1) // 2),  # + the Cholesky factor's lower triangle
    "scalabl/layer-noise": 4 * 2 * RANK,
    "scalabl/adapter-noise": 4 * 2 * RANK,
    "scalabl/eb-module": 4 * 2 * RANK,
    "scalabl/eb-model": 4 * 2 * RANK,
}
# ScalaBL's variants: name -> options
VARIANTS = {
    "scalabl/full": {"covariance": "full"},
    "scalabl/layer-noise": {"noise_sharing": "layer"},
    "scalabl/adapter-noise": {"noise_sharing": "adapter"},
    "scalabl/eb-module": {"prior_fit": "module"},
    "scalabl/eb-model": {"prior_fit": "model"},
    "blora_xs/laplace": {"xs_posterior": "laplace"},
}


def method_config(name: str) -> MethodConfig:
    return MethodConfig(
        method=name.split("/")[0],
        **VARIANTS.get(name, {}),
        rank=RANK,
        ensemble_size=K,
        tfb_samples=2,
        tfb_search_steps=2,
        laplace_max_train=6,
        swag_start=0.0,  # SWAG collects all three steps
    )


def build(name: str, seed: int = 0) -> BayesianLoRA:
    return BayesianLoRA(make_tiny_llama(), make_byte_tokenizer(), method_config(name), seed=seed)


def trained(name: str, seed: int = 0) -> BayesianLoRA:
    blora = build(name, seed)
    blora.fit(TRAIN, steps=3, batch_size=4, lr=1e-2, seed=seed, progress=False)
    blora.calibrate(VALIDATION, train=TRAIN, config=PredictConfig(n_samples=2, seed=seed))
    return blora


@pytest.fixture(scope="module", params=[*METHODS, *VARIANTS])
def fitted(request) -> tuple[str, BayesianLoRA]:
    torch.set_num_threads(1)
    return request.param, trained(request.param)


def test_probabilities_are_distributions(fitted):
    name, blora = fitted
    for s in (0, 3):
        p = blora.predict_proba(TEST, n_samples=s, seed=0)
        assert p.dtype == torch.float64 and p.shape == (len(TEST), 4)
        assert torch.allclose(p.sum(-1), torch.ones(len(TEST), dtype=torch.float64), atol=1e-9)
        for i, e in enumerate(TEST):  # absent choices get exactly zero
            assert torch.all(p[i, len(e.choices) :] == 0)
        assert torch.all(p >= 0)


def test_deterministic_under_a_seed(fitted):
    name, blora = fitted
    a = blora.predict_log_proba(TEST, n_samples=3, seed=7)
    b = blora.predict_log_proba(TEST, n_samples=3, seed=7)
    assert torch.equal(a, b)


def test_training_is_deterministic_under_a_seed(fitted):
    name, blora = fitted
    again = trained(name)
    assert torch.equal(
        blora.predict_log_proba(TEST, n_samples=2, seed=1), again.predict_log_proba(TEST, n_samples=2, seed=1)
    )


def test_samples_differ_only_for_stochastic_methods(fitted):
    name, blora = fitted
    samples = blora.predict(TEST, PredictConfig(n_samples=3, seed=0)).samples
    if name == "ensemble":
        assert samples.shape[0] == K and not torch.equal(samples[0], samples[1])
    elif name in (
        "laplace",
        "blora_xs/laplace",
    ):  # the GLM predictive: one averaged distribution, not the MAP's
        assert samples.shape[0] == 1
        assert not torch.allclose(samples[0], blora.predict_log_proba(TEST, n_samples=0))
    elif blora.method.bayesian:
        assert samples.shape[0] == 3 and not torch.equal(samples[0], samples[1])
    else:
        assert samples.shape[0] == 1


def test_save_and_load_give_identical_predictions(fitted, tmp_path):
    name, blora = fitted
    blora.save(tmp_path)
    loaded = BayesianLoRA.load(tmp_path, make_tiny_llama(), make_byte_tokenizer())
    assert loaded.config == blora.config and loaded.temperature == blora.temperature
    assert loaded.extra_parameters == blora.extra_parameters
    for s in (0, 3):
        assert torch.equal(
            loaded.predict_log_proba(TEST, n_samples=s, seed=1),
            blora.predict_log_proba(TEST, n_samples=s, seed=1),
        )


def test_extra_parameter_count(fitted):
    name, blora = fitted
    assert isinstance(blora.extra_parameters, int) and blora.extra_parameters >= 0
    if name in EXPECTED_EXTRA:
        assert blora.extra_parameters == EXPECTED_EXTRA[name]
    assert blora.lora_parameters == LORA


def test_every_method_documents_itself():
    for name, cls in METHODS.items():
        assert cls.name == name
        assert cls.description and len(cls.description) < 120, name
        assert cls.reference, name
