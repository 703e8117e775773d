"""What every method shares: the adapter config, the method interface and the noise controls.

A *Bayesian module* is a small ``nn.Module`` that replaces the ``lora_A`` linear of a peft
``LoraLayer`` (DESIGN §6). It keeps a posterior-mean ``weight`` so that peft's merge and
``get_delta_weight`` keep working, computes its own ``kl()``, and draws its noise explicitly:

* ``draw_noise(n_rows)`` draws one independent noise row per sequence (or a single shared row),
* ``select_noise(index)`` reorders/expands those rows when a batch is re-indexed (a prompt's
  noise is reused for each of its answer choices, so prompt and choices see one model sample),
* ``sampling`` switches between a posterior sample and the posterior mean (``n_samples = 0``).

The functions below apply those to every Bayesian module of a model, so training and scoring
code never needs to know which method it runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from scalabl.choices import KL_DIRECTIONS, NOISE_MODES
from scalabl.config import check_fields


@dataclass
class MethodConfig:
    """Adapter and posterior settings. Fields a method does not use are ignored by it."""

    method: str = "scalabl"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    # Variational posterior (scalabl): q(s) = N(mu, sigma^2), sigma_0 ~ U(sigma_init / sqrt 2, sigma_init).
    sigma_init: float = field(default=0.05, metadata={"help": "initial posterior std scale (eps)"})
    prior_std: float = field(default=1.0, metadata={"help": "std of the N(0, prior_std^2) prior"})
    kl_direction: str = field(
        default="correct",
        metadata={"help": "'correct' = KL(q||p); 'reference' = KL(p||q) as the paper's code computes it"},
    )
    noise: str = field(
        default="sequence",
        metadata={"help": "'sequence' = one draw per sequence; 'shared' = one per forward"},
    )

    def __post_init__(self) -> None:
        from scalabl.methods import METHODS  # late import: the registry imports this module

        self.target_modules = tuple(self.target_modules)
        if self.method not in METHODS:
            raise ValueError(f"method: unknown method {self.method!r}; allowed: {', '.join(METHODS)}")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank: must be a positive integer, got {self.rank!r}")
        if self.alpha <= 0:
            raise ValueError(f"alpha: must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout!r}")
        if not self.target_modules:
            raise ValueError("target_modules: at least one module name is required")
        if self.sigma_init <= 0:
            raise ValueError(f"sigma_init: must be > 0, got {self.sigma_init!r}")
        if self.prior_std <= 0:
            raise ValueError(f"prior_std: must be > 0, got {self.prior_std!r}")
        if self.kl_direction not in KL_DIRECTIONS:
            raise ValueError(f"kl_direction: {self.kl_direction!r} not in {KL_DIRECTIONS}")
        if self.noise not in NOISE_MODES:
            raise ValueError(f"noise: {self.noise!r} not in {NOISE_MODES}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MethodConfig:
        check_fields(cls, d, "method config")
        return cls(**d)


class BayesianModule(nn.Module, ABC):
    """A stochastic replacement for a LoRA ``A`` linear (see module docstring)."""

    sampling: bool

    @abstractmethod
    def kl(self) -> torch.Tensor:
        """KL(q || p) (or the configured direction) of this module, as a float32 scalar."""

    @abstractmethod
    def draw_noise(self, n_rows: int, generator: torch.Generator | None = None) -> None:
        """Draw fresh noise: one row per sequence (or one shared row)."""

    @abstractmethod
    def select_noise(self, index: torch.Tensor) -> None:
        """Re-index the current noise rows (``noise = noise[index]``); shared noise is unchanged."""

    @abstractmethod
    def clear_noise(self) -> None:
        """Forget the current noise (the next sampling forward draws its own)."""

    @abstractmethod
    def extra_parameters(self) -> int:
        """Parameters this module has beyond the plain LoRA ``A`` it replaces."""

    @abstractmethod
    def variational_parameters(self) -> list[nn.Parameter]:
        """The posterior's location/scale parameters (what the KL acts on)."""

    @abstractmethod
    def stats(self) -> dict[str, float]:
        """Mean posterior location and scale (``mu``, ``sigma``, ``sigma_over_mu``) for logging."""


def bayesian_modules(model: nn.Module) -> list[BayesianModule]:
    return [m for m in model.modules() if isinstance(m, BayesianModule)]


def draw_noise(model: nn.Module, n_rows: int, generator: torch.Generator | None = None) -> None:
    for m in bayesian_modules(model):
        m.draw_noise(n_rows, generator)


def select_noise(model: nn.Module, index: torch.Tensor) -> None:
    for m in bayesian_modules(model):
        m.select_noise(index)


def clear_noise(model: nn.Module) -> None:
    for m in bayesian_modules(model):
        m.clear_noise()


@contextmanager
def sampling(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Within the block, Bayesian modules sample (True) or use the posterior mean (False)."""
    modules = bayesian_modules(model)
    before = [m.sampling for m in modules]
    for m in modules:
        m.sampling = enabled
    try:
        yield
    finally:
        for m, b in zip(modules, before, strict=True):
            m.sampling = b


def variational_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every Bayesian module's variational parameters, in module order."""
    return [p for m in bayesian_modules(model) for p in m.variational_parameters()]


def posterior_stats(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per-module posterior statistics: the numbers that tell if the posterior is alive."""
    return {name: m.stats() for name, m in model.named_modules() if isinstance(m, BayesianModule)}


def total_kl(model: nn.Module) -> torch.Tensor:
    """Sum of the modules' KL terms in float32 (zero for a model with no Bayesian module)."""
    kls = [m.kl() for m in bayesian_modules(model)]
    if not kls:
        return torch.zeros((), dtype=torch.float32)
    return torch.stack(kls).sum()


def lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield (name, peft LoraLayer) for every adapted layer of a peft model."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


class Method(ABC):
    """A way of fitting a LoRA adapter and predicting with it.

    Lifecycle: ``wrap`` a base model (adds the adapters), train it with the shared loop (or fit it
    post hoc), predict with ``n_samples`` posterior samples; ``save``/``load`` go through the run
    folder (see :mod:`scalabl.api`).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    bayesian: ClassVar[bool] = False

    def __init__(self, config: MethodConfig) -> None:
        self.config = config

    def lora_config(self) -> LoraConfig:
        c = self.config
        return LoraConfig(
            r=c.rank,
            lora_alpha=c.alpha,
            lora_dropout=c.dropout,
            target_modules=list(c.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )

    def wrap(self, model: nn.Module) -> PeftModel:
        """Add LoRA adapters with peft, then let the method specialise them."""
        try:
            peft_model = get_peft_model(model, self.lora_config())
        except ValueError as err:
            if "not found in the base model" in str(err):
                raise ValueError(
                    f"target_modules: {list(self.config.target_modules)} matched no module of the model"
                ) from err
            raise
        self.specialise(peft_model)
        return peft_model

    def specialise(self, model: PeftModel) -> None:  # noqa: B027 - optional hook
        """Turn the plain LoRA layers into this method's layers (nothing for plain LoRA)."""

    def extra_parameters(self, model: nn.Module) -> int:
        """Parameters beyond those of the plain LoRA adapter with the same rank and targets."""
        return sum(m.extra_parameters() for m in bayesian_modules(model))
