"""The Python API: wrap -> fit -> predict, evaluate, save -> load."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from conftest import make_byte_tokenizer, make_tiny_llama
from conftest import toy_examples as shared_toy_examples

from scalabl.api import ADAPTER_CONFIG_FILE, ADAPTER_FILE, BayesianLoRA
from scalabl.config import PredictConfig
from scalabl.examples import Example
from scalabl.methods import MethodConfig

RANK = 4
N_MODULES = 4  # q_proj and v_proj in each of the tiny Llama's 2 layers


def toy_examples(n: int = 12, seed: int = 0) -> list[Example]:
    return shared_toy_examples(n, seed, varied=True)


def wrap(method: str) -> BayesianLoRA:
    return BayesianLoRA(make_tiny_llama(), make_byte_tokenizer(), MethodConfig(method=method, rank=RANK))


@pytest.fixture(scope="module")
def trained() -> tuple[BayesianLoRA, list[Example]]:
    """A ScalaBL adapter trained enough that B != 0 (so predictions depend on the adapter)."""
    examples = toy_examples()
    blora = wrap("scalabl")
    blora.fit(examples, steps=6, lr=1e-2, batch_size=4, progress=False)
    return blora, examples


# ---- the five-line use ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["mle", "scalabl"])
def test_wrap_fit_predict_proba(method):
    examples = toy_examples()
    blora = wrap(method)
    history = blora.fit(examples, steps=3, batch_size=4, progress=False)
    probs = blora.predict_proba(examples, n_samples=3)

    assert len(history) == 1 and history is blora.history
    assert probs.dtype == torch.float64
    assert probs.shape == (len(examples), 4)
    assert (probs >= 0).all()
    for row, e in zip(probs, examples, strict=True):
        c = len(e.choices)
        assert row[:c].sum().item() == pytest.approx(1.0, abs=1e-12)
        assert (row[c:] == 0).all()  # absent choices have probability 0

    expected_extra = 2 * RANK * N_MODULES if method == "scalabl" else 0
    assert blora.extra_parameters == expected_extra
    # LoRA A (r x 32) and B (32 x r or kv-out x r) on every module; ScalaBL's P replaces A.
    assert blora.lora_parameters > 0


def test_extra_parameters_counts_rank_and_modules():
    blora = BayesianLoRA(
        make_tiny_llama(),
        make_byte_tokenizer(),
        MethodConfig(method="scalabl", rank=2, target_modules=("q_proj", "k_proj", "v_proj")),
    )
    assert blora.extra_parameters == 2 * 2 * 3 * 2


def test_deterministic_method_ignores_n_samples():
    examples = toy_examples(6)
    blora = wrap("mle")
    torch.testing.assert_close(
        blora.predict_proba(examples, n_samples=3), blora.predict_proba(examples, n_samples=0), rtol=0, atol=0
    )


def test_sampled_predictions_are_seeded(trained):
    blora, examples = trained
    a = blora.predict_log_proba(examples, n_samples=3, seed=1)
    b = blora.predict_log_proba(examples, n_samples=3, seed=1)
    c = blora.predict_log_proba(examples, n_samples=3, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_negative_n_samples_raises(trained):
    blora, examples = trained
    with pytest.raises(ValueError, match="n_samples"):
        blora.predict_proba(examples, n_samples=-1)


def test_fit_overrides_config_fields():
    history = wrap("mle").fit(toy_examples(4), steps=4, batch_size=2, log_every=2, progress=False)
    assert [h["step"] for h in history] == [2, 4]
    with pytest.raises(TypeError):
        wrap("mle").fit(toy_examples(4), not_a_field=1, progress=False)


# ---- evaluate ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_samples", [0, 3])
def test_evaluate_metrics_in_range(trained, n_samples):
    blora, examples = trained
    m = blora.evaluate(examples, n_samples=n_samples)
    assert set(m) >= {"acc", "ece", "nll", "brier"}
    assert 0.0 <= m["acc"] <= 1.0
    assert 0.0 <= m["ece"] <= 1.0
    assert m["nll"] >= 0.0 and math.isfinite(m["nll"])
    assert 0.0 <= m["brier"] <= 2.0
    # acc agrees with the argmax of the predictions
    probs = blora.predict_proba(examples, n_samples=n_samples)
    labels = torch.tensor([e.label for e in examples])
    assert m["acc"] == pytest.approx((probs.argmax(-1) == labels).double().mean().item())
    nll = -probs[torch.arange(len(examples)), labels].log().mean().item()
    assert m["nll"] == pytest.approx(nll, rel=1e-9)


# ---- save / load ---------------------------------------------------------------------------------
def test_save_load_round_trip(trained, tmp_path):
    blora, examples = trained
    blora.save(tmp_path, note="hello")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ADAPTER_FILE, ADAPTER_CONFIG_FILE])
    assert ADAPTER_FILE == "adapter.safetensors" and ADAPTER_CONFIG_FILE == "adapter_config.json"
    meta = json.loads((tmp_path / ADAPTER_CONFIG_FILE).read_text())
    assert meta["method"] == blora.config.to_dict()
    assert meta["scoring"] == "continuation"
    assert meta["note"] == "hello"

    loaded = BayesianLoRA.load(tmp_path, make_tiny_llama(), make_byte_tokenizer())
    assert loaded.config == blora.config
    assert loaded.extra_parameters == blora.extra_parameters
    for n_samples in (0, 4):
        original = blora.predict_log_proba(examples, n_samples=n_samples, seed=3)
        restored = loaded.predict_log_proba(examples, n_samples=n_samples, seed=3)
        torch.testing.assert_close(restored, original, rtol=0, atol=1e-12)

    # The adapter matters: a fresh (untrained, B = 0) wrap predicts differently.
    fresh = wrap("scalabl").predict_log_proba(examples, n_samples=0)
    assert not torch.allclose(fresh, blora.predict_log_proba(examples, n_samples=0))


def test_save_load_mle(tmp_path):
    examples = toy_examples(6)
    blora = wrap("mle")
    blora.fit(examples, steps=3, lr=1e-2, batch_size=3, progress=False)
    blora.save(tmp_path)
    loaded = BayesianLoRA.load(tmp_path, make_tiny_llama(), make_byte_tokenizer())
    assert loaded.config.method == "mle" and loaded.extra_parameters == 0
    torch.testing.assert_close(
        loaded.predict_log_proba(examples, n_samples=0),
        blora.predict_log_proba(examples, n_samples=0),
        rtol=0,
        atol=1e-12,
    )


def test_load_without_adapter_files_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter"):
        BayesianLoRA.load(tmp_path, make_tiny_llama(), make_byte_tokenizer())
    (tmp_path / ADAPTER_CONFIG_FILE).write_text("{}")  # config alone is not enough
    with pytest.raises(FileNotFoundError):
        BayesianLoRA.load(tmp_path, make_tiny_llama(), make_byte_tokenizer())
    with pytest.raises(FileNotFoundError):
        BayesianLoRA.load(tmp_path / "missing", make_tiny_llama(), make_byte_tokenizer())


# ---- known bug -----------------------------------------------------------------------------------
def test_examples_reusing_an_id_are_scored_by_their_own_text():
    first = Example(id="0", question="Is the sky blue?", choices=("yes", "no"), label=0)
    second = Example(id="0", question="What colour is grass?", choices=("green", "red", "blue"), label=0)
    blora = wrap("mle")
    blora.predict_proba([first], n_samples=0)  # fills the encoding cache under id "0"
    got = blora.predict_proba([second], n_samples=0)
    expected = wrap("mle").predict_proba([second], n_samples=0)  # a fresh scorer, same weights
    torch.testing.assert_close(got, expected)


def test_a_pickle_in_place_of_the_adapter_is_refused(tmp_path):
    import pickle

    blora = wrap("mle")
    blora.save(tmp_path)
    with open(tmp_path / ADAPTER_FILE, "wb") as f:
        pickle.dump({"weight": [1, 2, 3]}, f)
    with pytest.raises(ValueError, match="not a valid safetensors file.*never loads pickles"):
        BayesianLoRA.load(tmp_path, make_tiny_llama(), make_byte_tokenizer())


# ---- memory: gradient checkpointing, half-precision bases ----------------------------------------
def _one_step_grads(blora: BayesianLoRA, examples: list[Example], scorer) -> dict[str, torch.Tensor]:
    """Gradients of one training batch's NLL, with the train loop's noise handling."""
    from scalabl.bayesian import clear_noise, sampling

    blora.model.train()
    blora.model.zero_grad(set_to_none=True)
    torch.manual_seed(11)  # peft/MC dropout masks come from the global RNG
    with sampling(blora.model, True):
        try:
            logits = scorer.class_logits(
                blora.model,
                examples,
                sample=True,
                generator=torch.Generator().manual_seed(3),
                keep_noise=True,
            )
            torch.nn.functional.cross_entropy(logits, torch.tensor([e.label for e in examples])).backward()
        finally:
            clear_noise(blora.model)
    return {n: p.grad.clone() for n, p in blora.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["mle", "scalabl", "blob", "mcdropout", "map"])
def test_gradient_checkpointing_gives_the_same_gradients(method):
    from scalabl.scoring import Scorer

    examples = toy_examples(4)
    tok = make_byte_tokenizer()
    config = MethodConfig(method=method, rank=RANK, dropout=0.2 if method == "mle" else None)
    plain = BayesianLoRA(make_tiny_llama(), tok, config, seed=1)
    checkpointed = BayesianLoRA(make_tiny_llama(), tok, config, seed=1, gradient_checkpointing=True)
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.model.modules())
    assert not checkpointed.train_scorer().reuse_prompt and checkpointed.scorer.reuse_prompt
    with torch.no_grad():  # B = 0 at init: make the adapter matter so every gradient is nonzero
        for a, b in zip(plain.model.parameters(), checkpointed.model.parameters(), strict=True):
            if a.requires_grad:
                a.add_(0.1)
                b.add_(0.1)
    expected = _one_step_grads(plain, examples, Scorer(tok, reuse_prompt=False))
    got = _one_step_grads(checkpointed, examples, checkpointed.train_scorer())
    assert expected.keys() == got.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_checkpointing_trains_and_predicts_with_the_cache():
    examples = toy_examples(8)
    blora = BayesianLoRA(
        make_tiny_llama(),
        make_byte_tokenizer(),
        MethodConfig(method="scalabl", rank=RANK),
        gradient_checkpointing=True,
    )
    history = blora.fit(examples, steps=3, batch_size=4, log_every=1, progress=False)
    assert len(history) == 3 and all(math.isfinite(h["loss"]) for h in history)
    probs = blora.predict_proba(examples, n_samples=2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(examples), dtype=probs.dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_keeps_the_posterior_in_float32(dtype):
    from scalabl.bayesian import bayesian_modules, total_kl, variational_parameters

    examples = toy_examples(8)
    blora = BayesianLoRA(
        make_tiny_llama().to(dtype), make_byte_tokenizer(), MethodConfig(method="scalabl", rank=RANK)
    )
    base_dtypes = {p.dtype for p in blora.model.parameters() if not p.requires_grad}
    assert base_dtypes == {dtype}
    assert {p.dtype for p in variational_parameters(blora.model)} == {torch.float32}
    assert total_kl(blora.model).dtype == torch.float32
    assert len(bayesian_modules(blora.model)) == N_MODULES
    history = blora.fit(examples, steps=3, batch_size=4, log_every=1, progress=False)
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["kl"]) for h in history)
    assert {p.dtype for p in variational_parameters(blora.model)} == {torch.float32}
    probs = blora.predict_proba(examples, n_samples=2)
    assert probs.dtype == torch.float64 and torch.isfinite(probs).all()


def test_a_run_of_the_same_method_seeds_a_temperature_on_top(tmp_path):
    """from_run with a run of this very method and settings: its adapter (posterior included) is taken
    whole and nothing is trained; calibrate fits only the temperature."""
    train, validation, test = (shared_toy_examples(n, seed=k) for n, k in ((8, 0), (6, 1), (5, 2)))
    config = MethodConfig(method="scalabl", rank=4)
    source = BayesianLoRA(make_tiny_llama(), make_byte_tokenizer(), config, seed=0)
    source.fit(train, steps=3, batch_size=4, lr=1e-2, progress=False)
    source.save(tmp_path / "scalabl")
    on_top = BayesianLoRA(make_tiny_llama(), make_byte_tokenizer(), replace(config, temperature=True), seed=1)
    on_top.init_from(tmp_path / "scalabl")
    for s in (0, 3):
        assert torch.equal(
            on_top.predict_log_proba(test, n_samples=s, seed=2),
            source.predict_log_proba(test, n_samples=s, seed=2),
        )
    on_top.calibrate(validation, config=PredictConfig(n_samples=3, seed=0))
    assert on_top.temperature is not None and on_top.temperature > 0
    other = BayesianLoRA(make_tiny_llama(), make_byte_tokenizer(), replace(config, sigma_init=0.2), seed=0)
    with pytest.raises(ValueError, match="cannot seed another method"):
        other.init_from(tmp_path / "scalabl")
