"""The method interface: how every method wraps, trains, predicts and persists a LoRA adapter.

The Bayesian layers a method puts into the model follow the protocol of :mod:`scalabl.bayesian`;
training is the one loop of :mod:`scalabl.train`, prediction the one of :mod:`scalabl.predict`.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from scalabl.architectures import resolve_targets, untied_head_adapter
from scalabl.bayesian import bayesian_modules, clear_noise, draw_noise, lora_layers, sampling
from scalabl.config import MethodConfig, PredictConfig, TrainConfig
from scalabl.distributed import full
from scalabl.examples import Example
from scalabl.optimisation import TrainingHooks
from scalabl.predict import predict_samples, set_question_noise
from scalabl.scoring import Scorer
from scalabl.train import fit


def reject_subset(method: str, sample_modules: str) -> None:
    """For methods whose samples are not module noise (members, a Laplace predictive)."""
    if sample_modules != "all":
        raise ValueError(f"sample_modules={sample_modules!r}: {method} samples whole models; use 'all'")


def sample_seed(seed: int, k: int) -> int:
    """The seed of whole-network posterior sample ``k`` under ``seed`` (IVON, SWAG): sample k is the
    same network for every batch."""
    return (seed * 1_000_003 + k) % 2**63


def whole_network_samples(
    method: Method, model: nn.Module, scorer: Scorer, examples: Sequence[Example], config: PredictConfig
) -> torch.Tensor:
    """``[S, N, C]`` for a method whose samples are whole networks (IVON, SWAG): one deterministic
    pass per sample k, held by ``method.posterior_sample(k)``; S = 0: the mean's one pass."""
    reject_subset(method.name, config.sample_modules)
    one_pass = replace(config, n_samples=0)
    if config.n_samples == 0:
        return predict_samples(model, scorer, examples, one_pass)
    out = []
    for k in range(config.n_samples):
        with method.posterior_sample(model, k, (), config.seed, torch.Generator()):
            out.append(predict_samples(model, scorer, examples, one_pass)[0])
    return torch.stack(out)


class Method(ABC):
    """A way of fitting a LoRA adapter and predicting with it.

    Lifecycle, the same for every method:

    1. ``wrap(model)`` adds the adapters (peft) and specialises them (e.g. Bayesian ``A`` modules);
    2. ``fit(...)`` trains them with the shared loop (:func:`scalabl.train.fit`);
    3. ``post_fit(...)`` does the post-hoc part (TFB's beta search, Laplace's Hessian); a no-op
       for methods that are done after training;
    4. ``predict_samples(...)`` returns per-sample predictive log-probs ``[S, N, C]``; the caller
       averages them once (:func:`scalabl.predict.bayesian_model_average`);
    5. ``adapter_state`` / ``load_adapter_state`` give the tensors a saved adapter holds.

    A method object holds its configuration and whatever it fitted post hoc; one object serves
    one wrapped model.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    reference: ClassVar[str] = ""
    bayesian: ClassVar[bool] = False  # predictions depend on n_samples
    has_mean: ClassVar[bool] = True  # one model stands for the posterior (the ensemble has none)
    default_dropout: ClassVar[float] = 0.0
    default_prior_std: ClassVar[float] = 1.0
    default_sigma_init: ClassVar[float] = 0.05
    # learning rate of the variational parameters under the elbo recipe when the TrainConfig leaves
    # it at None (None here too: the main learning rate)
    default_variational_lr: ClassVar[float | None] = None
    temperature_scaled: ClassVar[bool] = False  # always fit a temperature after training

    def __init__(self, config: MethodConfig) -> None:
        self.config = config

    @property
    def dropout(self) -> float:
        return self.default_dropout if self.config.dropout is None else self.config.dropout

    @property
    def prior_std(self) -> float:
        return self.default_prior_std if self.config.prior_std is None else self.config.prior_std

    @property
    def sigma_init(self) -> float:
        return self.default_sigma_init if self.config.sigma_init is None else self.config.sigma_init

    def train_config(self, config: TrainConfig) -> TrainConfig:
        """``config`` with the method's defaults for the fields it leaves at None."""
        if config.variational_lr is None and self.default_variational_lr is not None:
            return replace(config, variational_lr=self.default_variational_lr)
        return config

    # ---- 1. build ---------------------------------------------------------------------------------
    def lora_config(self) -> LoraConfig:
        c = self.config
        if c.target_modules is None:
            raise ValueError("target_modules: resolved when the model is wrapped; wrap it first")
        return LoraConfig(
            r=c.rank,
            lora_alpha=c.alpha,
            lora_dropout=self.dropout,
            target_modules=list(c.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )

    def wrap(self, model: nn.Module) -> PeftModel:
        """Add LoRA adapters with peft, then let the method specialise them."""
        peft_model = self.add_lora(model)
        self.specialise(peft_model)
        return peft_model

    def add_lora(self, model: nn.Module, adapter_name: str = "default") -> PeftModel:
        """peft's ``get_peft_model`` with this method's LoRA config. Target modules left at None become
        the architecture's defaults here (:func:`scalabl.architectures.resolve_targets`), so the saved
        and exported adapter configs name them."""
        targets = resolve_targets(model, self.config.target_modules)
        if targets != self.config.target_modules:
            self.config = replace(self.config, target_modules=targets)
        with untied_head_adapter():
            peft_model = get_peft_model(model, self.lora_config(), adapter_name=adapter_name)
        for name, layer in lora_layers(peft_model):
            # A rank above min(in, out) adds parameters but no expressiveness (and breaks the SVD inits).
            limit = min(layer.in_features, layer.out_features)
            if self.config.rank > limit:
                raise ValueError(
                    f"rank: {self.config.rank} exceeds min(in, out) = {limit} of {name} "
                    f"({layer.in_features} -> {layer.out_features}); use rank <= {limit}"
                )
        return peft_model

    def specialise(self, model: PeftModel) -> None:  # noqa: B027 - optional hook
        """Turn the plain LoRA layers into this method's layers (nothing for plain LoRA)."""

    # ---- 2. train ---------------------------------------------------------------------------------
    def penalty(self, model: nn.Module) -> Callable[[], torch.Tensor] | None:
        """A negative log prior added to the training loss as ``penalty() / N_train`` (MAP); None = none."""
        return None

    def training_hooks(self, model: nn.Module, config: TrainConfig) -> TrainingHooks:
        """What this method changes in the shared loop (IVON's optimiser, SWAG's collection); the
        default changes nothing."""
        return TrainingHooks()

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
        """Train the adapter with the shared loop (checkpointed into ``checkpoint_dir``); returns its history."""
        config = self.train_config(config)
        return fit(
            model,
            scorer,
            train,
            config,
            penalty=self.penalty(model),
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            progress=progress,
            on_log=on_log,
            validation=validation,
            hooks=self.training_hooks(model, config),
        )

    # ---- 3. post hoc ------------------------------------------------------------------------------
    def post_fit(
        self,
        model: nn.Module,
        scorer: Scorer,
        *,
        train: Sequence[Example],
        validation: Sequence[Example],
        seed: int = 0,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Post-hoc fitting after training; returns facts worth recording (e.g. the chosen beta)."""
        return {}

    # ---- 4. predict -------------------------------------------------------------------------------
    def samples_for(self, requested: int) -> int:
        """What S means for this method: the posterior samples a request of ``requested`` runs
        (deterministic methods: 0, one pass; an ensemble: its K members, whatever is asked)."""
        return requested if self.bayesian else 0

    def sample_counts(self, requested: Sequence[int]) -> tuple[int, ...]:
        """The distinct sample counts an evaluation of ``requested`` runs, in order."""
        return tuple(dict.fromkeys(self.samples_for(s) for s in requested))

    def predict_samples(
        self, model: nn.Module, scorer: Scorer, examples: Sequence[Example], config: PredictConfig
    ) -> torch.Tensor:
        """Per-sample predictive log-probs ``[max(S, 1), N, C_max]`` (float64)."""
        return predict_samples(
            model, scorer, examples, replace(config, n_samples=self.samples_for(config.n_samples))
        )

    @contextmanager
    def posterior_sample(
        self, model: nn.Module, k: int, questions: Sequence[object], seed: int, generator: torch.Generator
    ) -> Iterator[None]:
        """Hold posterior sample ``k`` on the model for a batch of ``questions`` (one sequence each),
        for as many forwards as the caller runs: a generated answer, token by token, then the scores
        of answers, all under that one sample. Per-sequence noise is seeded by each question's text
        (:func:`scalabl.predict.set_question_noise`), so a question's sample does not depend on its
        batch; other noise is drawn from ``generator`` (MC dropout's masks are drawn anew in each
        forward from the seed drawn here)."""
        with sampling(model, True):
            modules = bayesian_modules(model)
            if modules and all(m.stackable for m in modules):
                set_question_noise(model, questions, seed, [k])
            else:
                draw_noise(model, len(questions), generator)
            try:
                yield
            finally:
                clear_noise(model)

    # ---- 5. persist -------------------------------------------------------------------------------
    def adapter_state(self, model: PeftModel) -> dict[str, torch.Tensor]:
        """The tensors a saved adapter holds (peft's key format for the active adapter)."""
        # An explicit state dict skips peft's check for 1-D lora_A tensors (meant to catch
        # un-gathered ZeRO-3 shards), which ScalaBL's log_mu / log_sigma vectors would trip.
        state = get_peft_model_state_dict(model, state_dict=model.state_dict(), save_embedding_layers=False)
        return {k: full(v.detach()).contiguous().cpu() for k, v in state.items()}

    def load_adapter_state(self, model: PeftModel, state: dict[str, torch.Tensor], source: str) -> None:
        """Load :meth:`adapter_state`'s tensors; ``source`` names the file in errors."""
        result = set_peft_model_state_dict(model, state)
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing:
            raise ValueError(f"{source}: adapter is missing {len(missing)} tensors, e.g. {missing[0]}")

    def extra_parameters(self, model: nn.Module) -> int:
        """Parameters beyond those of the plain LoRA adapter with the same rank and targets."""
        return sum(m.extra_parameters() for m in bayesian_modules(model))
