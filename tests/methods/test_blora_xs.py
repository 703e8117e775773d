"""B-LoRA-XS: the frozen SVD factors (checked against numpy), a zero core is the base model, only the
cores train, SWAG's moments and samples equal a numpy computation over the collected iterates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama, toy_examples

from scalabl.api import BayesianLoRA
from scalabl.bayesian import lora_layers
from scalabl.methods import MethodConfig
from scalabl.methods.blora_xs import XSCore, swag_collect, swag_sample

TRAIN = toy_examples(8)
EXAMPLES = toy_examples(4, seed=3)
R = 4


def xs(**kw) -> BayesianLoRA:
    config = MethodConfig(method="blora_xs", rank=R, **kw)
    return BayesianLoRA(make_tiny_llama(), make_byte_tokenizer(), config, seed=0)


def test_a_zero_core_is_the_base_model_and_only_the_cores_train():
    blora = xs()
    base = make_tiny_llama()
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        assert torch.allclose(blora.model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-6)
    trainable = [n for n, p in blora.model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".core.weight") for n in trainable)
    frozen_b = {n: p.detach().clone() for n, p in blora.model.named_parameters() if "lora_B" in n}
    blora.fit(TRAIN, steps=3, batch_size=4, lr=1e-2, progress=False)
    for n, p in blora.model.named_parameters():
        if "lora_B" in n:
            assert torch.equal(p, frozen_b[n])
    assert blora.method.trained_parameters(blora.model) == 4 * R * R


def test_an_identity_core_adds_the_base_weights_rank_r_part_by_numpy_svd():
    blora = xs()
    c = 0.3
    for _, layer in lora_layers(blora.model):
        core = layer.lora_A["default"]
        assert isinstance(core, XSCore)
        with torch.no_grad():
            core.core.weight.copy_(c * torch.eye(R))
        w = layer.get_base_layer().weight.detach().double().numpy()
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        expected = w + layer.scaling["default"] * c * (u[:, :R] * s[:R]) @ vt[:R]
        x = torch.randn(3, w.shape[1])
        with torch.no_grad():
            got = layer(x).double().numpy()
        np.testing.assert_allclose(got, x.double().numpy() @ expected.T, atol=1e-5)
        # the plain LoRA A it equals (what export writes): R V_r^T, singular vectors up to their sign
        a = core.weight.detach().double().numpy()
        signs = np.sign(np.sum(a * vt[:R], axis=1, keepdims=True))
        np.testing.assert_allclose(a, signs * c * vt[:R], atol=1e-5)


def test_swag_collect_equals_numpy_over_the_iterates():
    rng = np.random.default_rng(0)
    iterates = rng.normal(size=(7, 3, 3))
    k = 4
    mean, sq, dev = (
        torch.zeros(3, 3, dtype=torch.float64),
        torch.zeros(3, 3, dtype=torch.float64),
        torch.zeros(k, 3, 3, dtype=torch.float64),
    )
    for n, theta in enumerate(iterates):
        swag_collect(mean, sq, dev, n, torch.from_numpy(theta))
    np.testing.assert_allclose(mean.numpy(), iterates.mean(0))
    np.testing.assert_allclose(sq.numpy(), (iterates**2).mean(0))
    # slot n mod K holds iterate n minus the mean of iterates 0..n
    running = np.cumsum(iterates, 0) / np.arange(1, 8)[:, None, None]
    for n in range(3, 7):
        np.testing.assert_allclose(dev[n % k].numpy(), iterates[n] - running[n])


def test_swag_sample_is_maddoxs_formula():
    rng = np.random.default_rng(1)
    iterates = rng.normal(size=(5, 2, 2))
    mean, sq, dev = (
        torch.zeros(2, 2, dtype=torch.float64),
        torch.zeros(2, 2, dtype=torch.float64),
        torch.zeros(3, 2, 2, dtype=torch.float64),
    )
    for n, theta in enumerate(iterates):
        swag_collect(mean, sq, dev, n, torch.from_numpy(theta))
    z1, z2 = torch.from_numpy(rng.normal(size=(2, 2))), torch.from_numpy(rng.normal(size=3))
    var = np.clip((iterates**2).mean(0) - iterates.mean(0) ** 2, 0, None)
    d = dev.numpy().reshape(3, 4).T  # columns: the deviations
    expected = (
        iterates.mean(0).reshape(4)
        + np.sqrt(var).reshape(4) * z1.numpy().reshape(4) / math.sqrt(2)
        + d @ z2.numpy() / math.sqrt(2 * 2)
    )
    np.testing.assert_allclose(swag_sample(mean, sq, dev, 5, z1, z2).numpy().reshape(4), expected)
    # one iterate: no spread; the diagonal alone below two deviations
    assert torch.equal(swag_sample(mean * 0 + 1, sq * 0 + 1, dev, 1, z1, z2[:1]), mean * 0 + 1)


def test_training_collects_the_iterates_at_a_held_learning_rate():
    blora = xs(swag_start=0.5, swag_rank=3)
    seen: list[torch.Tensor] = []
    cores = blora.method.cores(blora.model)
    history = blora.fit(
        TRAIN, steps=8, batch_size=4, lr=1e-2, log_every=1, progress=False,
        on_log=lambda r: seen.append(torch.stack([c.core.weight.detach().clone() for c in cores])),
    )  # fmt: skip
    lrs = [r["lr"] for r in history]
    assert lrs[4:] == [lrs[4]] * 4 and lrs[4] > 0  # held from step 4 on (the schedule's value there)
    iterates = torch.stack(seen[4:]).double().numpy()  # steps 5..8 collected
    assert int(cores[0].swag_n) == 4
    for i, core in enumerate(cores):
        np.testing.assert_allclose(
            core.swag_mean.double().numpy(), iterates[:, i].mean(0), rtol=1e-5, atol=1e-7
        )
        np.testing.assert_allclose(
            core.swag_sq.double().numpy(), (iterates[:, i] ** 2).mean(0), rtol=1e-5, atol=1e-9
        )
    facts = blora.method.post_fit(blora.model, blora.scorer, train=TRAIN, validation=[])
    assert facts == {"swag_iterates": 4, "swag_deviations": 3}
    for i, core in enumerate(cores):  # the SWA mean is the posterior mean
        np.testing.assert_allclose(
            core.core.weight.detach().double().numpy(), iterates[:, i].mean(0), rtol=1e-5, atol=1e-7
        )


def test_samples_share_the_low_rank_draw_and_leave_the_mean():
    blora = xs(swag_start=0.0, swag_rank=3)
    blora.fit(TRAIN, steps=5, batch_size=4, lr=5e-2, progress=False)
    blora.method.post_fit(blora.model, blora.scorer, train=TRAIN, validation=[])
    cores = blora.method.cores(blora.model)
    mean = [c.core.weight.detach().clone() for c in cores]
    with blora.method.posterior_sample(blora.model, 0, [], 0, torch.Generator()):
        a = [c.core.weight.detach().clone() for c in cores]
    with blora.method.posterior_sample(blora.model, 0, [], 0, torch.Generator()):
        again = [c.core.weight.detach().clone() for c in cores]
    assert all(torch.equal(x, y) for x, y in zip(a, again, strict=True))
    assert any(not torch.equal(x, m) for x, m in zip(a, mean, strict=True))
    assert all(torch.equal(c.core.weight, m) for c, m in zip(cores, mean, strict=True))
    p = blora.predict_log_proba(EXAMPLES, n_samples=3, seed=0)
    assert torch.isfinite(p).all()


def test_bad_swag_settings_are_named():
    with pytest.raises(ValueError, match="swag_start"):
        MethodConfig(method="blora_xs", swag_start=1.0)
    with pytest.raises(ValueError, match="swag_rank"):
        MethodConfig(method="blora_xs", swag_rank=0)


def test_the_held_rate_is_never_a_warm_up_rate():
    blora = xs(swag_start=0.0)
    history = blora.fit(TRAIN, steps=10, batch_size=4, lr=1e-2, warmup_ratio=0.3, log_every=1, progress=False)
    lrs = [r["lr"] for r in history]
    assert lrs[3:] == [lrs[3]] * 7 and lrs[3] == pytest.approx(1e-2)  # held where the warm-up ends
