"""MC dropout (Gal & Ghahramani, ICML 2016) on LoRA: dropout on the adapter input stays on at test
time and S stochastic passes are averaged.

The dropout lives in the ``A`` module (not in peft's ``lora_dropout``) so that its masks at
prediction are drawn from the prediction's seeded generator: the same seed gives the same S masks,
and one mask stream serves a prompt and its answer choices. In training (``module.training``) the
masks come from torch's global RNG, as plain dropout's do: gradient checkpointing saves and
restores that RNG around the recomputed forward, so the recomputed masks equal the first ones.
Default rate 0.1 (LoRA's usual dropout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel
from torch import nn

from scalabl.bayesian import BayesianModule, replace_lora_a
from scalabl.methods.base import Method


class DropoutA(nn.Linear, BayesianModule):
    """LoRA's ``A`` linear with inverted dropout on its input, seeded per draw."""

    def __init__(self, in_features: int, rank: int, p: float) -> None:
        super().__init__(in_features, rank, bias=False)
        self.p = p
        self.sampling = True
        self._generator: torch.Generator | None = None

    def draw_noise(self, n_rows: int, generator: torch.Generator | None = None) -> None:
        # One seed per draw; masks for every token are then drawn from it, in call order.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        self._generator = torch.Generator(device=self.weight.device).manual_seed(seed)

    def select_noise(self, index: torch.Tensor) -> None:
        """Masks are per token and drawn as the tokens arrive: nothing to re-index."""

    def clear_noise(self) -> None:
        self._generator = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sampling and self.p > 0:
            if self._generator is None or self.training:
                x = F.dropout(x, self.p, training=True)
            else:
                keep = torch.rand(x.shape, generator=self._generator, device=x.device) >= self.p
                x = x * keep.to(x.dtype) / (1.0 - self.p)
        return F.linear(x, self.weight)

    def kl(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float32, device=self.weight.device)

    def extra_parameters(self) -> int:
        return 0

    def variational_parameters(self) -> list[nn.Parameter]:
        return []

    def stats(self) -> dict[str, float]:
        return {}


class MCDropout(Method):
    name = "mcdropout"
    description = "LoRA with dropout on the adapter input, kept on at test time; S stochastic passes"
    reference = "Gal & Ghahramani, ICML 2016, arXiv:1506.02142"
    bayesian = True
    default_dropout = 0.1

    def lora_config(self) -> LoraConfig:
        config = super().lora_config()
        config.lora_dropout = 0.0  # the dropout is in DropoutA, where it can be seeded
        return config

    def specialise(self, model: PeftModel) -> None:
        def build(lora_a: nn.Linear) -> DropoutA:
            new = DropoutA(lora_a.in_features, lora_a.out_features, self.dropout)
            new.weight = lora_a.weight  # keep peft's initialisation
            return new

        replace_lora_a(model, build)
