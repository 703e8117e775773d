"""Deep ensemble of LoRA adapters (Lakshminarayanan et al., NeurIPS 2017; Wang et al., 2023 for LoRA).

K independent adapters on one base model (peft's multi-adapter support: the base weights are held
once), named ``member0 .. member{K-1}``. They are trained one after another by the shared loop,
member k with seed ``seed + k`` (its own initialisation and data order). Prediction runs each
member once, selected by its explicit name, and averages the K predictive distributions: the K
members are the "samples" of the model average, whatever ``n_samples`` says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from scalabl.architectures import untied_head_adapter
from scalabl.config import PredictConfig, TrainConfig
from scalabl.examples import Example
from scalabl.methods.base import Method, reject_subset
from scalabl.predict import predict_samples
from scalabl.scoring import Scorer
from scalabl.train import fit

SEPARATOR = "::"  # saved keys are "member{k}::{peft key}"


class Ensemble(Method):
    name = "ensemble"
    description = "K independent LoRA adapters trained one after another; their predictions averaged"
    has_mean = False  # no single mean model: a generated answer is the members' majority
    reference = "Lakshminarayanan et al., NeurIPS 2017, arXiv:1612.01474; Wang et al. 2023, arXiv:2310.00035"

    @property
    def members(self) -> list[str]:
        return [f"member{k}" for k in range(self.config.ensemble_size)]

    def wrap(self, model: nn.Module) -> PeftModel:
        first, *rest = self.members
        peft_model = self.add_lora(model, adapter_name=first)
        for name in rest:  # initialised from the global RNG in turn: seeded by the caller
            with untied_head_adapter():
                peft_model.add_adapter(name, self.lora_config())
        peft_model.set_adapter(first)
        return peft_model

    def fit(
        self,
        model: nn.Module,
        scorer: Scorer,
        train: Sequence[Example],
        config: TrainConfig,
        *,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
        on_log: Callable[[dict[str, Any]], None] | None = None,
        validation: Sequence[Example] = (),
    ) -> list[dict[str, Any]]:
        """Train member k with seed ``config.seed + k``; history records carry ``member``.

        Each member checkpoints into ``checkpoint_dir/member{k}``: a resumed run restores the members
        already trained from their final checkpoints and continues the interrupted one.
        """
        history: list[dict[str, Any]] = []
        for k, name in enumerate(self.members):
            model.set_adapter(name)  # makes only this member trainable

            def tagged(record: dict[str, Any], k: int = k) -> None:
                record["member"] = k
                if on_log is not None:
                    on_log(record)

            history += fit(
                model,
                scorer,
                train,
                replace(config, seed=config.seed + k),
                checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir) / name,
                resume=resume,
                progress=progress,
                on_log=tagged,
                validation=validation,
            )
        model.set_adapter(self.members[0])
        return history

    def predict_samples(
        self, model: nn.Module, scorer: Scorer, examples: Sequence[Example], config: PredictConfig
    ) -> torch.Tensor:
        """One deterministic pass per member: ``[K, N, C]``."""
        reject_subset(self.name, config.sample_modules)
        one_pass = replace(config, n_samples=0)
        samples = []
        try:
            for name in self.members:
                model.set_adapter(name)
                samples.append(predict_samples(model, scorer, examples, one_pass)[0])
        finally:
            model.set_adapter(self.members[0])
        return torch.stack(samples)

    @contextmanager
    def posterior_sample(
        self, model: nn.Module, k: int, questions: Sequence[object], seed: int, generator: torch.Generator
    ) -> Iterator[None]:
        """Member ``k`` (of K) is the k-th sample."""
        model.set_adapter(self.members[k % len(self.members)])
        try:
            yield
        finally:
            model.set_adapter(self.members[0])

    def samples_for(self, requested: int) -> int:
        return self.config.ensemble_size

    def adapter_state(self, model: PeftModel) -> dict[str, torch.Tensor]:
        full = model.state_dict()
        return {
            f"{name}{SEPARATOR}{k}": v.detach().contiguous().cpu()
            for name in self.members
            for k, v in get_peft_model_state_dict(
                model, state_dict=full, adapter_name=name, save_embedding_layers=False
            ).items()
        }

    def load_adapter_state(self, model: PeftModel, state: dict[str, torch.Tensor], source: str) -> None:
        for name in self.members:
            prefix = f"{name}{SEPARATOR}"
            member = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if not member:
                raise ValueError(f"{source}: no tensors for ensemble member {name!r}")
            result = set_peft_model_state_dict(model, member, adapter_name=name)
            missing = [k for k in result.missing_keys if "lora_" in k and f".{name}." in k]
            if missing:
                raise ValueError(
                    f"{source}: member {name} is missing {len(missing)} tensors, e.g. {missing[0]}"
                )
        model.set_adapter(self.members[0])

    def extra_parameters(self, model: nn.Module) -> int:
        """The K - 1 members beyond the first: (K - 1) x one LoRA adapter."""
        member = sum(p.numel() for n, p in model.named_parameters() if f".{self.members[0]}." in n)
        return (self.config.ensemble_size - 1) * member
