"""Ensemble: K members with explicit names, trained in turn, averaged; training one leaves the others."""

from __future__ import annotations

import math

import torch
from conftest import make_byte_tokenizer, make_tiny_llama, toy_examples
from peft import get_peft_model_state_dict

from scalabl.api import BayesianLoRA
from scalabl.config import PredictConfig
from scalabl.methods import MethodConfig

EXAMPLES = toy_examples(8)


def ensemble(k: int = 3) -> BayesianLoRA:
    return BayesianLoRA(
        make_tiny_llama(),
        make_byte_tokenizer(),
        MethodConfig(method="ensemble", rank=4, ensemble_size=k),
        seed=0,
    )


def member_state(blora: BayesianLoRA, name: str) -> dict[str, torch.Tensor]:
    state = get_peft_model_state_dict(blora.model, adapter_name=name)
    return {k: v.detach().clone() for k, v in state.items()}


def test_members_are_separate_adapters_with_different_inits():
    blora = ensemble(3)
    assert blora.method.members == ["member0", "member1", "member2"]
    a, b = member_state(blora, "member0"), member_state(blora, "member1")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_training_member_k_leaves_the_others_and_history_is_tagged():
    blora = ensemble(2)
    before = member_state(blora, "member1")
    from scalabl.config import TrainConfig
    from scalabl.train import fit

    blora.model.set_adapter("member0")
    fit(blora.model, blora.scorer, EXAMPLES, TrainConfig(steps=2, batch_size=4, lr=1e-2), progress=False)
    after = member_state(blora, "member1")
    assert all(torch.equal(before[k], after[k]) for k in before)
    history = ensemble(2).fit(EXAMPLES, steps=2, batch_size=4, log_every=1, progress=False)
    assert [h["member"] for h in history] == [0, 0, 1, 1]


def test_prediction_is_the_average_of_the_members():
    blora = ensemble(3)
    blora.fit(EXAMPLES, steps=2, batch_size=4, lr=2e-2, progress=False)
    prediction = blora.predict(EXAMPLES, PredictConfig(n_samples=10))
    avg, samples = prediction.log_probs, prediction.samples
    assert samples.shape[0] == 3
    members = []
    for name in blora.method.members:
        blora.model.set_adapter(name)
        members.append(blora.scorer.class_logits(blora.model, EXAMPLES, sample=False).double().softmax(-1))
    blora.model.set_adapter("member0")
    expected = torch.stack(members).mean(0)
    assert torch.allclose(avg.exp(), expected, atol=1e-6)
    assert math.isclose(avg.exp().sum(-1).mean().item(), 1.0, abs_tol=1e-9)
    # the active adapter after prediction is member0, whatever ran last
    assert blora.model.active_adapter == "member0"
