"""MC dropout: dropout stays on at test time with the configured rate, seeded; S = 0 is the plain LoRA."""

from __future__ import annotations

import torch
from conftest import make_byte_tokenizer, make_tiny_llama, toy_examples

from scalabl.api import BayesianLoRA
from scalabl.bayesian import bayesian_modules, lora_layers
from scalabl.methods import MethodConfig
from scalabl.methods.mcdropout import DropoutA


def test_default_rate_and_peft_dropout_off():
    blora = BayesianLoRA(make_tiny_llama(), make_byte_tokenizer(), MethodConfig(method="mcdropout", rank=4))
    mods = bayesian_modules(blora.model)
    assert mods and all(isinstance(m, DropoutA) and m.p == 0.1 for m in mods)
    for _, layer in lora_layers(blora.model):
        assert isinstance(layer.lora_dropout["default"], torch.nn.Identity)


def test_mask_rate_and_inverted_scaling():
    m = DropoutA(1000, 1, p=0.3)
    with torch.no_grad():
        m.weight.fill_(1.0)
        m.draw_noise(1, torch.Generator().manual_seed(0))
        x = torch.ones(200, 1000)
        out = m(x)  # each row: sum of kept inputs / 0.7
    kept = out * 0.7 / 1000
    assert abs(kept.mean().item() - 0.7) < 0.005
    assert abs(out.mean().item() - 1000) < 10  # inverted dropout keeps the mean


def test_zero_samples_is_the_deterministic_lora_and_seeds_matter():
    blora = BayesianLoRA(
        make_tiny_llama(), make_byte_tokenizer(), MethodConfig(method="mcdropout", rank=4, dropout=0.5)
    )
    examples = toy_examples(6)
    blora.fit(examples, steps=3, batch_size=3, lr=1e-2, progress=False)
    with torch.no_grad():
        for m in bayesian_modules(blora.model):
            m.p = 0.0
    no_dropout = blora.predict_log_proba(examples, n_samples=2, seed=0)
    for m in bayesian_modules(blora.model):
        m.p = 0.5
    assert torch.allclose(blora.predict_log_proba(examples, n_samples=0), no_dropout, atol=1e-12)
    a = blora.predict_log_proba(examples, n_samples=2, seed=0)
    b = blora.predict_log_proba(examples, n_samples=2, seed=1)
    assert not torch.allclose(a, b)
