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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from scalabl.choices import (
    KL_DIRECTIONS,
    LAPLACE_HESSIANS,
    LAPLACE_PREDICTIVES,
    LAPLACE_SUBSETS,
    NOISE_MODES,
)
from scalabl.config import check_fields
from scalabl.distributed import full

if TYPE_CHECKING:  # runtime imports would be circular (scoring and train import this module)
    from scalabl.data import Example
    from scalabl.scoring import Scorer
    from scalabl.train import TrainConfig


@dataclass
class MethodConfig:
    """Adapter and posterior settings. Fields a method does not use are ignored by it.

    ``dropout``, ``prior_std`` and ``sigma_init`` left at ``None`` take the method's own default
    (see :attr:`Method.default_dropout`, :attr:`Method.default_prior_std`,
    :attr:`Method.default_sigma_init` and docs/methods.md).
    """

    method: str = "scalabl"
    rank: int = 8
    alpha: float = 16.0
    dropout: float | None = field(default=None, metadata={"help": "LoRA dropout (None: method default)"})
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    # Variational posterior (scalabl, blob): sigma_0 ~ U(sigma_init / sqrt 2, sigma_init) (blob: rho_0).
    sigma_init: float | None = field(
        default=None, metadata={"help": "initial posterior std scale eps (None: method default)"}
    )
    prior_std: float | None = field(
        default=None, metadata={"help": "std of the N(0, prior_std^2) prior (None: method default)"}
    )
    kl_direction: str = field(
        default="correct",
        metadata={"help": "'correct' = KL(q||p); 'reference' = KL(p||q) as the paper's code computes it"},
    )
    noise: str = field(
        default="sequence",
        metadata={"help": "'sequence' = one draw per sequence; 'shared' = one per forward"},
    )
    ensemble_size: int = field(default=3, metadata={"help": "ensemble: number of members K"})
    tfb_tolerance: float = field(
        default=0.01, metadata={"help": "tfb: largest allowed rise of validation NLL (nats)"}
    )
    tfb_samples: int = field(default=4, metadata={"help": "tfb: posterior samples per validation NLL"})
    tfb_search_steps: int = field(default=8, metadata={"help": "tfb: bisection steps of the beta search"})
    laplace_subset: str = field(
        default="all", metadata={"help": "laplace: 'all' LoRA weights or the 'last_layer' adapters"}
    )
    laplace_hessian: str = field(default="kron", metadata={"help": "laplace: 'kron' or 'diag' Hessian"})
    laplace_predictive: str = field(default="glm", metadata={"help": "laplace: 'glm' or 'mc' predictive"})
    laplace_max_train: int = field(
        default=256, metadata={"help": "laplace: training examples the Hessian is estimated on"}
    )
    temperature: bool = field(
        default=False, metadata={"help": "fit a temperature on the validation split after training"}
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
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout!r}")
        if not self.target_modules:
            raise ValueError("target_modules: at least one module name is required")
        if self.sigma_init is not None and self.sigma_init <= 0:
            raise ValueError(f"sigma_init: must be > 0, got {self.sigma_init!r}")
        if self.prior_std is not None and self.prior_std <= 0:
            raise ValueError(f"prior_std: must be > 0, got {self.prior_std!r}")
        if self.kl_direction not in KL_DIRECTIONS:
            raise ValueError(f"kl_direction: {self.kl_direction!r} not in {KL_DIRECTIONS}")
        if self.noise not in NOISE_MODES:
            raise ValueError(f"noise: {self.noise!r} not in {NOISE_MODES}")
        for name in ("ensemble_size", "tfb_samples", "tfb_search_steps", "laplace_max_train"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        if self.tfb_tolerance < 0:
            raise ValueError(f"tfb_tolerance: must be >= 0, got {self.tfb_tolerance!r}")
        for name, allowed in (
            ("laplace_subset", LAPLACE_SUBSETS),
            ("laplace_hessian", LAPLACE_HESSIANS),
            ("laplace_predictive", LAPLACE_PREDICTIVES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: {getattr(self, name)!r} not in {allowed}")

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
    # False when the rows of one draw are correlated (flipout shares one Gaussian draw across rows):
    # then S posterior samples must come from S draws, not from S copies of a batch in one draw.
    independent_rows: ClassVar[bool] = True

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


def reject_subset(method: str, sample_modules: str) -> None:
    """For methods whose samples are not module noise (members, a Laplace predictive)."""
    if sample_modules != "all":
        raise ValueError(f"sample_modules={sample_modules!r}: {method} samples whole models; use 'all'")


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
    # Modules without a location/scale (MC dropout's) report nothing.
    return {
        name: stats
        for name, m in model.named_modules()
        if isinstance(m, BayesianModule) and (stats := m.stats())
    }


def total_kl(model: nn.Module) -> torch.Tensor:
    """Sum of the modules' KL terms in float32 (zero for a model with no Bayesian module)."""
    kls = [m.kl() for m in bayesian_modules(model)]
    if not kls:
        return torch.zeros((), dtype=torch.float32)
    return torch.stack(kls).sum()


def replace_lora_a(model: nn.Module, build: Callable[[nn.Linear], nn.Module]) -> None:
    """Replace every adapter's ``lora_A`` linear by ``build(old_linear)``, on the old one's device."""
    for _, layer in lora_layers(model):
        for adapter_name, lora_a in list(layer.lora_A.items()):
            layer.lora_A[adapter_name] = build(lora_a).to(lora_a.weight.device)


def lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield (name, peft LoraLayer) for every adapted layer of a peft model."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


class Method(ABC):
    """A way of fitting a LoRA adapter and predicting with it.

    Lifecycle, the same for every method:

    1. ``wrap(model)`` adds the adapters (peft) and specialises them (e.g. Bayesian ``A`` modules);
    2. ``fit(...)`` trains them with the shared loop (:func:`scalabl.train.fit`);
    3. ``post_fit(...)`` does the post-hoc part (TFB's beta search, Laplace's Hessian); a no-op
       for methods that are done after training;
    4. ``predict_samples(...)`` returns per-sample predictive log-probs ``[S, N, C]`` that the
       caller averages (the Bayesian model average);
    5. ``adapter_state`` / ``load_adapter_state`` give the tensors a saved adapter holds.

    A method object holds its configuration and whatever it fitted post hoc; one object serves
    one wrapped model.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    reference: ClassVar[str] = ""
    bayesian: ClassVar[bool] = False  # predictions depend on n_samples
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
        """peft's ``get_peft_model`` with this method's LoRA config; names the field when nothing matches."""
        try:
            peft_model = get_peft_model(model, self.lora_config(), adapter_name=adapter_name)
        except ValueError as err:
            if "not found in the base model" in str(err):
                raise ValueError(
                    f"target_modules: {list(self.config.target_modules)} matched no module of the model"
                ) from err
            raise
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
    ) -> list[dict[str, Any]]:
        """Train the adapter with the shared loop (checkpointed into ``checkpoint_dir``); returns its history."""
        from scalabl.train import fit

        return fit(
            model,
            scorer,
            train,
            self.train_config(config),
            penalty=self.penalty(model),
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            progress=progress,
            on_log=on_log,
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
    def sample_counts(self, requested: Sequence[int]) -> tuple[int, ...]:
        """The sample counts an evaluation should run: deterministic methods run one pass (S = 0)."""
        return tuple(requested) if self.bayesian else (0,)

    def predict_samples(
        self,
        model: nn.Module,
        scorer: Scorer,
        examples: Sequence[Example],
        *,
        n_samples: int,
        batch_size: int = 8,
        seed: int = 0,
        progress: bool = False,
        batch_samples: bool = False,
        sample_modules: str = "all",
    ) -> torch.Tensor:
        """Per-sample predictive log-probs ``[max(S, 1), N, C_max]`` (float64)."""
        from scalabl.predict import predict_log_proba

        _, samples = predict_log_proba(
            model,
            scorer,
            examples,
            n_samples=n_samples if self.bayesian else 0,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
            return_samples=True,
            batch_samples=batch_samples,
            sample_modules=sample_modules,
        )
        return samples

    # ---- 5. persist -------------------------------------------------------------------------------
    def adapter_state(self, model: PeftModel) -> dict[str, torch.Tensor]:
        """The tensors a saved adapter holds (peft's key format for the active adapter)."""
        # An explicit state dict skips peft's check for 1-D lora_A tensors (meant to catch
        # un-gathered ZeRO-3 shards), which ScalaBL's log_mu / log_sigma vectors would trip.
        state = get_peft_model_state_dict(model, state_dict=model.state_dict())
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
