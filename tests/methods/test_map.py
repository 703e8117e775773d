"""MAP: the penalty is the Gaussian negative log prior, and it shrinks the weights relative to MLE."""

from __future__ import annotations

import torch
from conftest import make_byte_tokenizer, make_tiny_llama, toy_examples
from torch.distributions import Normal

from scalabl.api import BayesianLoRA
from scalabl.methods import MethodConfig


def lora_norm(blora: BayesianLoRA) -> float:
    return sum(p.detach().pow(2).sum().item() for n, p in blora.model.named_parameters() if "lora_" in n)


def test_penalty_is_the_negative_log_prior_up_to_a_constant():
    blora = BayesianLoRA(
        make_tiny_llama(), make_byte_tokenizer(), MethodConfig(method="map", rank=4, prior_std=0.5)
    )
    params = [p.detach() for n, p in blora.model.named_parameters() if "lora_" in n]
    penalty = blora.method.penalty(blora.model)()
    prior = Normal(0.0, 0.5)
    log_prior = sum(prior.log_prob(p).sum() for p in params)
    constant = sum(p.numel() for p in params) * prior.log_prob(torch.tensor(0.0))
    assert torch.allclose(penalty, -(log_prior - constant), rtol=1e-5)


def test_map_shrinks_the_adapter_relative_to_mle():
    train = toy_examples(8)
    norms = {}
    for method in ("mle", "map"):
        blora = BayesianLoRA(
            make_tiny_llama(),
            make_byte_tokenizer(),
            MethodConfig(method=method, rank=4, prior_std=0.02),
            seed=0,
        )
        history = blora.fit(train, steps=6, batch_size=4, lr=1e-2, log_every=1, progress=False)
        norms[method] = lora_norm(blora)
        if method == "map":
            assert all(h["loss"] > h["nll"] for h in history)  # the prior term is in the objective
    assert norms["map"] < norms["mle"]
