"""The training loop: it learns, it is seeded, both recipes work, accumulation, KL, validation."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama, toy_examples
from peft import get_peft_model_state_dict

from scalabl.api import BayesianLoRA
from scalabl.bayesian import bayesian_modules
from scalabl.config import TrainConfig
from scalabl.methods import MethodConfig
from scalabl.optimisation import blob_kl_weight
from scalabl.scoring import Scorer
from scalabl.train import fit


def wrap(method: str = "scalabl", seed: int = 0, **method_kw) -> BayesianLoRA:
    return BayesianLoRA(
        make_tiny_llama(), make_byte_tokenizer(), MethodConfig(method=method, rank=4, **method_kw), seed=seed
    )


def adapter_state(blora: BayesianLoRA) -> dict[str, torch.Tensor]:
    state = get_peft_model_state_dict(blora.model, state_dict=blora.model.state_dict())
    return {k: v.detach().clone() for k, v in state.items()}


def log_sigmas(blora: BayesianLoRA) -> torch.Tensor:
    return torch.cat([m.log_sigma.detach().clone() for m in bayesian_modules(blora.model)])


def comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


# ---- learning ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["mle", "scalabl"])
def test_short_run_lowers_training_nll(method):
    train = toy_examples()
    blora = wrap(method)
    before = blora.evaluate(train, n_samples=0)["nll"]
    history = blora.fit(train, steps=30, lr=1e-2, batch_size=8, log_every=5, progress=False)
    after = blora.evaluate(train, n_samples=0)["nll"]

    assert [h["step"] for h in history] == [5, 10, 15, 20, 25, 30]
    assert all(math.isfinite(h["nll"]) and math.isfinite(h["loss"]) for h in history)
    assert history[-1]["nll"] < history[0]["nll"]
    assert after < before
    assert not blora.model.training  # fit leaves the model in eval mode


def test_history_records_posterior_stats_for_scalabl_only():
    train = toy_examples(8)
    h_s = wrap("scalabl").fit(train, steps=2, batch_size=4, log_every=1, progress=False)
    h_m = wrap("mle").fit(train, steps=2, batch_size=4, log_every=1, progress=False)
    assert len(h_s) == len(h_m) == 2
    for key in ("sigma", "mu", "sigma_over_mu", "modules"):
        assert key in h_s[-1]
        assert key not in h_m[-1]
    assert len(h_s[-1]["modules"]) == 4  # q_proj, v_proj x 2 layers
    assert h_s[-1]["sigma"] > 0 and h_s[-1]["mu"] > 0


def test_on_log_receives_every_record():
    seen = []
    history = wrap("mle").fit(
        toy_examples(8), steps=5, batch_size=4, log_every=2, progress=False, on_log=seen.append
    )
    assert [h["step"] for h in history] == [2, 4, 5]  # the last step is always logged
    assert seen == history


# ---- seeds ---------------------------------------------------------------------------------------
def _seeded_run(seed: int):
    blora = wrap("scalabl", seed=seed)
    history = blora.fit(
        toy_examples(12), steps=4, batch_size=4, lr=1e-2, log_every=1, seed=seed, progress=False
    )
    return comparable(history), adapter_state(blora)


def test_same_seed_same_run_different_seed_differs():
    h1, s1 = _seeded_run(0)
    h2, s2 = _seeded_run(0)
    h3, s3 = _seeded_run(1)
    assert h1 == h2
    assert s1.keys() == s2.keys() == s3.keys()
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    assert h1 != h3
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)


def test_train_seed_alone_changes_data_order_and_noise():
    train = toy_examples(12)
    runs = []
    for train_seed in (0, 0, 5):
        blora = wrap("scalabl", seed=0)
        runs.append(
            comparable(blora.fit(train, steps=3, batch_size=4, log_every=1, seed=train_seed, progress=False))
        )
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


# ---- recipes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["mle", "scalabl"])
def test_blob_recipe_runs(method):
    history = wrap(method).fit(
        toy_examples(8), steps=3, batch_size=4, recipe="blob", log_every=1, progress=False
    )
    assert len(history) == 3
    assert all(math.isfinite(h["nll"]) for h in history)
    if method == "scalabl":
        assert all(h["kl"] > 0 for h in history)
    else:
        assert all(h["kl"] == 0 for h in history)


def test_blob_kl_step_moves_log_sigma_by_the_sgd_update():
    """One blob step with a negligible NLL learning rate: log_sigma moves by the KL SGD step alone.

    4 examples, batch 128: M = floor(100 * 4^(pi/8) / 128) = 1, so pi_1 = 2 / 3. KL(q||p) with
    prior_std 1 has d KL / d log_sigma = sigma^2 - 1, so SGD adds kl_lr * 2/3 * (1 - sigma^2).
    """
    train = toy_examples(4)
    assert math.floor(100 * 4 ** (math.pi / 8) / 128) == 1
    blora = wrap("scalabl")
    before = log_sigmas(blora)
    kl_lr = 0.5
    history = blora.fit(
        train, steps=1, batch_size=128, lr=1e-9, warmup_ratio=0.0, recipe="blob", kl_lr=kl_lr, progress=False
    )
    after = log_sigmas(blora)
    expected = before + kl_lr * (2 / 3) * (1 - before.exp() ** 2)
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-5)
    assert (after > before + 0.1).all()  # sigma grows towards the prior
    assert history[0]["kl"] > 0

    # With a tiny kl_lr nothing visible happens: the move above is the KL step's doing.
    blora = wrap("scalabl")
    blora.fit(
        train, steps=1, batch_size=128, lr=1e-9, warmup_ratio=0.0, recipe="blob", kl_lr=1e-9, progress=False
    )
    torch.testing.assert_close(log_sigmas(blora), before, rtol=0, atol=1e-6)


def _m(n: int, bs: int) -> int:
    return math.floor(100 * n ** (math.pi / 8) / bs)


@pytest.mark.parametrize(("n", "bs"), [(4, 128), (4, 64), (10, 64), (24, 64), (50, 32), (24, 16), (100, 20)])
def test_blob_kl_weight_matches_exact_formula(n, bs):
    m = _m(n, bs)
    assert 1 <= m <= 40
    denominator = 2 ** (m + 1) - 1
    for step in range(2 * m + 1):
        i = step % m + 1
        exact = Fraction(2**i, denominator)
        assert blob_kl_weight(step, n, bs) == pytest.approx(float(exact), rel=1e-12, abs=0)
    # One cycle of weights sums to (2^(M+1) - 2) / (2^(M+1) - 1).
    total = sum(blob_kl_weight(step, n, bs) for step in range(m))
    assert total == pytest.approx(float(Fraction(denominator - 1, denominator)), rel=1e-12)
    # The cycle restarts after M steps.
    assert blob_kl_weight(m, n, bs) == blob_kl_weight(0, n, bs)


def test_blob_kl_weight_huge_m_is_finite():
    n, bs = 10**6, 1
    m = _m(n, bs)
    assert m > 10_000  # 2^(M+1) overflows a float
    for step in (0, 1, m // 2, m - 3, m - 2, m - 1, m, 10 * m + 7):
        w = blob_kl_weight(step, n, bs)
        assert math.isfinite(w) and 0.0 <= w < 1.0
    # The last weights of a cycle are about 1/2, 1/4, 1/8 (2^i / 2^(M+1)).
    assert blob_kl_weight(m - 1, n, bs) == pytest.approx(0.5, rel=1e-9)
    assert blob_kl_weight(m - 2, n, bs) == pytest.approx(0.25, rel=1e-9)
    assert blob_kl_weight(m - 3, n, bs) == pytest.approx(0.125, rel=1e-9)


def test_blob_kl_weight_tiny_m_is_clamped_to_one():
    # 100 * 2^(pi/8) / 10**6 < 1: M is clamped to 1, i is always 1, pi_1 = 2 / 3.
    assert blob_kl_weight(0, 2, 10**6) == pytest.approx(2 / 3)
    assert blob_kl_weight(7, 2, 10**6) == pytest.approx(2 / 3)


# ---- gradient accumulation -----------------------------------------------------------------------
def test_grad_accum_runs_and_logs():
    history = wrap("scalabl").fit(
        toy_examples(8), steps=3, batch_size=2, grad_accum=2, log_every=1, progress=False
    )
    assert [h["step"] for h in history] == [1, 2, 3]
    assert all(math.isfinite(h["nll"]) and h["kl"] > 0 for h in history)


def test_grad_accum_matches_one_big_batch_for_mle():
    """2 micro-batches of 2 average to the gradient of one batch of 4 (same examples, no noise)."""
    train = toy_examples(12)
    runs = []
    for bs, accum in ((4, 1), (2, 2)):
        blora = wrap("mle")
        h = blora.fit(train, steps=3, batch_size=bs, grad_accum=accum, lr=1e-2, log_every=1, progress=False)
        runs.append(([r["nll"] for r in h], adapter_state(blora)))
    (nll_a, state_a), (nll_b, state_b) = runs
    assert nll_a == pytest.approx(nll_b, abs=1e-5)
    for k in state_a:
        torch.testing.assert_close(state_a[k], state_b[k], rtol=1e-4, atol=1e-5)


# ---- the elbo KL term ----------------------------------------------------------------------------
def test_elbo_kl_logged_for_scalabl_and_zero_for_mle():
    train = toy_examples(8)
    h_s = wrap("scalabl").fit(train, steps=3, batch_size=4, kl_weight=1.0, log_every=1, progress=False)
    h_m = wrap("mle").fit(train, steps=3, batch_size=4, kl_weight=1.0, log_every=1, progress=False)
    assert all(h["kl"] > 0 for h in h_s)
    assert all(h["kl"] == 0 for h in h_m)
    # loss = nll + kl_weight * kl / N for a Bayesian method
    assert h_s[-1]["loss"] == pytest.approx(h_s[-1]["nll"] + h_s[-1]["kl"] / len(train))
    assert h_m[-1]["loss"] == pytest.approx(h_m[-1]["nll"])


def test_elbo_kl_gradient_reaches_log_sigma():
    """A heavy KL weight pulls sigma up towards the prior; without it sigma barely moves."""
    train = toy_examples(8)
    finals = {}
    for w in (0.0, 1e4):
        blora = wrap("scalabl")
        start = log_sigmas(blora)
        blora.fit(
            train,
            steps=6,
            batch_size=4,
            lr=1e-2,
            kl_weight=w,
            kl_warmup_ratio=0.5,
            warmup_ratio=0.0,
            progress=False,
        )
        finals[w] = log_sigmas(blora) - start
    # Adam moves each parameter by about lr per step: 6 steps ~ +0.06 when the KL dominates.
    assert (finals[1e4] > 0.03).all()
    assert finals[1e4].mean() > finals[0.0].mean() + 0.03


def test_variational_lr_sets_its_own_group():
    train = toy_examples(8)
    blora = wrap("scalabl")
    start = log_sigmas(blora)
    # A vanishing variational lr freezes log_mu / log_sigma while B and P still learn.
    blora.fit(train, steps=2, batch_size=4, lr=1e-2, variational_lr=1e-12, warmup_ratio=0.0, progress=False)
    torch.testing.assert_close(log_sigmas(blora), start, rtol=0, atol=1e-9)


def test_adam_eps_reaches_the_optimiser():
    """The papers' AdamW epsilon (1e-6) is the optimiser's, not torch's default 1e-8."""
    from scalabl.optimisation import optimisation

    blora = wrap("scalabl")
    for eps in (1e-8, 1e-6):
        opt = optimisation(blora.model, TrainConfig(adam_eps=eps))
        assert {g["eps"] for g in opt.main.param_groups} == {eps}
    with pytest.raises(ValueError, match="adam_eps"):
        TrainConfig(adam_eps=0)


@pytest.mark.parametrize("method", ["scalabl", "mcdropout", "ensemble"])
def test_the_validation_curve_leaves_training_as_it_was(method):
    """Scoring held-out questions during training draws nothing random: the adapter and the training
    records are those of a run without the curve, which only adds val_nll / val_acc to the logs."""
    train, held_out = toy_examples(8), toy_examples(6, seed=5)
    kw = {"ensemble_size": 2} if method == "ensemble" else {}
    runs = {}
    for size in (0, 4):
        blora = wrap(method, **kw)
        config = TrainConfig(steps=6, batch_size=4, lr=1e-2, log_every=2, val_size=size, val_every=3)
        blora.fit(train, config, validation=held_out, progress=False)
        runs[size] = (blora.method.adapter_state(blora.model), blora.history)
    (plain, plain_history), (curved, curved_history) = runs[0], runs[4]
    assert plain.keys() == curved.keys() and all(torch.equal(plain[k], curved[k]) for k in plain)
    assert [{k: v for k, v in h.items() if not k.startswith("val_")} for h in comparable(curved_history)] == (
        comparable(plain_history)
    )
    member0 = [h for h in curved_history if h.get("member", 0) == 0]
    assert [h["step"] for h in member0 if "val_nll" in h] == [4, 6]  # validated at 3 and 6, logged next
    assert all("val_nll" not in h for h in plain_history)


def test_the_validation_scores_are_the_posterior_means():
    blora = wrap("scalabl")
    held_out = toy_examples(5, seed=5)
    blora.fit(toy_examples(8), steps=2, batch_size=4, val_size=5, validation=held_out, progress=False)
    last = blora.history[-1]
    log_probs = blora.predict_log_proba(held_out, n_samples=0)
    labels = torch.tensor([e.label for e in held_out])
    expected_nll = -log_probs[torch.arange(5), labels].mean().item()
    assert last["val_nll"] == pytest.approx(expected_nll, abs=1e-5)
    assert last["val_acc"] == pytest.approx((log_probs.argmax(-1) == labels).double().mean().item())


def test_validation_interval_defaults_to_four_over_the_run():
    assert TrainConfig(steps=100).validation_interval == 25
    assert TrainConfig(steps=3).validation_interval == 1
    assert TrainConfig(steps=100, val_every=7).validation_interval == 7
    with pytest.raises(ValueError, match="val_size"):
        TrainConfig(val_size=-1)


# ---- validation ----------------------------------------------------------------------------------
def test_empty_training_set_raises():
    blora = wrap("mle")
    with pytest.raises(ValueError, match="empty"):
        blora.fit([], steps=1, progress=False)
    with pytest.raises(ValueError, match="empty"):
        fit(blora.model, Scorer(blora.tokenizer), [], TrainConfig(steps=1), progress=False)


@pytest.mark.parametrize("warmup, total", [(0, 10), (3, 10), (10, 10), (1, 1)])
def test_lr_factor_is_transformers_linear_schedule_and_holds(warmup, total):
    from transformers import get_linear_schedule_with_warmup

    from scalabl.optimisation import lr_factor

    reference = get_linear_schedule_with_warmup(torch.optim.SGD([torch.zeros(1)], lr=1.0), warmup, total)
    expected = [reference.lr_lambdas[0](s) for s in range(total + 2)]
    assert [lr_factor(s, warmup, total) for s in range(total + 2)] == expected
    held = [lr_factor(s, warmup, total, hold_from=total // 2) for s in range(total + 2)]
    assert held == expected[: total // 2] + [expected[total // 2]] * (total + 2 - total // 2)
