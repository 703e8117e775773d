"""The validation curve: held-out questions scored while training goes on (:func:`scalabl.train.fit`),
so that overfitting shows beside the training NLL in history.jsonl and training.png."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from torch import nn

from scalabl.examples import Example
from scalabl.metrics import accuracy, negative_log_likelihood
from scalabl.scoring import Scorer


def packs_4bit_for_cpu(model: nn.Module) -> bool:
    """Whether the model has bitsandbytes 4-bit layers on the CPU: an eval-mode forward repacks their
    weights for CPU inference for good, and later training steps then run a kernel without autograd."""
    bnb = sys.modules.get("bitsandbytes")  # not imported: no such layer can exist
    if bnb is None:
        return False
    return any(isinstance(m, bnb.nn.Linear4bit) and m.weight.device.type == "cpu" for m in model.modules())


def validation_scores(
    model: nn.Module, scorer: Scorer, examples: Sequence[Example], batch_size: int
) -> dict[str, float]:
    """Mean NLL and accuracy of the posterior-mean model on ``examples`` (for answers: the NLL per
    answer token, no accuracy); draws nothing random, so the training that goes on is the same with
    or without it."""
    model.eval()
    nll, correct, weight = 0.0, 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(examples), 2 * batch_size):
            batch = examples[i : i + 2 * batch_size]
            logits = scorer.class_logits(model, batch, sample=False).double()
            if not scorer.classifies:  # per answer token: weighted by the batch's tokens
                tokens = float(scorer.answer_tokens(batch).sum())
                nll += scorer.loss(logits, batch).item() * tokens
                weight += tokens
                continue
            log_probs = torch.log_softmax(logits, -1).cpu()
            labels = torch.tensor([e.label for e in batch])
            nll += negative_log_likelihood(log_probs, labels) * len(batch)
            correct += accuracy(log_probs.exp(), labels) * len(batch)
            weight += len(batch)
    model.train()
    if not scorer.classifies:
        return {"val_nll": nll / weight}
    return {"val_nll": nll / weight, "val_acc": correct / weight}
