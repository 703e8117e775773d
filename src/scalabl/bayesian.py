"""The ground floor: the Bayesian-module protocol and the anatomy of a causal LM.

A *Bayesian module* is a small ``nn.Module`` that replaces the ``lora_A`` linear of a peft
``LoraLayer`` (DESIGN §6). It keeps a posterior-mean ``weight`` so that peft's merge and
``get_delta_weight`` keep working, computes its own ``kl()``, and draws its noise explicitly:

* ``draw_noise(n_rows)`` draws one independent noise row per sequence (or a single shared row),
* ``select_noise(index)`` reorders/expands those rows when a batch is re-indexed (a prompt's
  noise is reused for each of its answer choices, so prompt and choices see one model sample),
* ``sampling`` switches between a posterior sample and the posterior mean (``n_samples = 0``),
* ``stackable`` says whether S draws of B rows may be stacked into one draw of S x B rows
  (``noise_rows`` / ``set_noise_rows``), which the fast sampling paths of :mod:`scalabl.subset` need.

The functions below apply those to every Bayesian module of a model, so training and scoring
code never needs to know which method it runs. The model anatomy (:func:`decoder_layers`,
:func:`output_head`, :func:`base_model`) is here too: every layer above asks it where things are.

This module imports nothing of scalabl but the option enums: everything else may import it.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import nn

from scalabl.choices import NoiseMode


class BayesianModule(nn.Module, ABC):
    """A stochastic replacement for a LoRA ``A`` linear (see the module docstring)."""

    sampling: bool
    # "sequence": one noise row per sequence; "shared": one row for the whole forward
    noise_mode: NoiseMode = NoiseMode.SEQUENCE
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

    # True when the prior variance is fitted over the whole adapter (empirical Bayes): total_kl
    # pools the modules' second_moment() and passes the variance to kl(prior_var)
    prior_pooled: bool = False

    def noise_group(self, name: str) -> tuple | None:
        """A key shared by the modules that take one noise draw together (``name``: this module's
        qualified name); None: its own draw."""
        return None

    def share_noise(self, leader: BayesianModule) -> None:
        """Take the current noise of ``leader``, a module of the same noise group."""
        raise NotImplementedError(f"{type(self).__name__} does not share noise")

    def second_moment(self) -> tuple[torch.Tensor, int]:
        """``E_q |theta|^2`` over the module's posterior and the dimension of theta (modules with
        ``prior_pooled`` only)."""
        raise NotImplementedError(f"{type(self).__name__} has no pooled prior")

    @property
    def copies_in_one_draw(self) -> bool:
        """Whether S copies of a batch in one draw are S independent samples (per-row noise,
        rows independent): then a batch may run its S samples as one forward."""
        return self.independent_rows and self.noise_mode == NoiseMode.SEQUENCE

    @property
    def stackable(self) -> bool:
        """Whether the noise is a tensor of independent rows that :meth:`noise_rows` and
        :meth:`set_noise_rows` expose (the fast paths stack S draws into one)."""
        return False

    def noise_rows(self) -> torch.Tensor:
        """The current noise, one row per sequence (stackable modules only)."""
        raise NotImplementedError(f"{type(self).__name__} has no stackable noise rows")

    def set_noise_rows(self, rows: torch.Tensor) -> None:
        """Set the noise to ``rows`` (stackable modules only)."""
        raise NotImplementedError(f"{type(self).__name__} has no stackable noise rows")


def bayesian_modules(model: nn.Module) -> list[BayesianModule]:
    return [m for m in model.modules() if isinstance(m, BayesianModule)]


def draw_noise(model: nn.Module, n_rows: int, generator: torch.Generator | None = None) -> None:
    """Fresh noise on every Bayesian module; modules of one noise group (:meth:`BayesianModule.noise_group`)
    take the draw of the group's first module."""
    leaders: dict[tuple, BayesianModule] = {}
    for name, m in model.named_modules():
        if not isinstance(m, BayesianModule):
            continue
        group = m.noise_group(name)
        if group is not None and group in leaders:
            m.share_noise(leaders[group])
            continue
        m.draw_noise(n_rows, generator)
        if group is not None:
            leaders[group] = m


def select_noise(model: nn.Module, index: torch.Tensor) -> None:
    for m in bayesian_modules(model):
        m.select_noise(index)


def clear_noise(model: nn.Module) -> None:
    for m in bayesian_modules(model):
        m.clear_noise()


@contextmanager
def sampling_only(model: nn.Module, chosen: Callable[[BayesianModule], bool]) -> Iterator[None]:
    """Within the block the modules for which ``chosen(module)`` holds sample; the rest use their
    posterior mean."""
    modules = bayesian_modules(model)
    before = [m.sampling for m in modules]
    for m in modules:
        m.sampling = chosen(m)
    try:
        yield
    finally:
        for m, b in zip(modules, before, strict=True):
            m.sampling = b


def sampling(model: nn.Module, enabled: bool):
    """Within the block, Bayesian modules sample (True) or use the posterior mean (False)."""
    return sampling_only(model, lambda _: enabled)


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
    """Sum of the modules' KL terms in float32 (zero for a model with no Bayesian module).

    Modules with ``prior_pooled`` share one empirical-Bayes prior variance, the ELBO's optimum
    given q: their summed ``E_q |theta|^2`` over their summed dimensions."""
    modules = bayesian_modules(model)
    pooled = [m for m in modules if m.prior_pooled]
    if pooled:
        moments, dims = zip(*(m.second_moment() for m in pooled), strict=True)
        var = torch.stack(moments).sum() / sum(dims)
    kls = [m.kl(prior_var=var) if m.prior_pooled else m.kl() for m in modules]
    if not kls:
        return torch.zeros((), dtype=torch.float32)
    return torch.stack(kls).sum()


# ---- anatomy -------------------------------------------------------------------------------------
def lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield (name, peft LoraLayer) for every adapted layer of a peft model."""
    from peft.tuners.lora import LoraLayer  # peft (and the bitsandbytes it imports) only when asked

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def replace_lora_a(model: nn.Module, build: Callable[[nn.Linear], nn.Module]) -> None:
    """Replace every adapter's ``lora_A`` linear by ``build(old_linear)``, on the old one's device."""
    for _, layer in lora_layers(model):
        for adapter_name, lora_a in list(layer.lora_A.items()):
            layer.lora_A[adapter_name] = build(lora_a).to(lora_a.weight.device)


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (the model itself if it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers (the longest ModuleList named ``layers``)."""
    stacks = [
        m for name, m in model.named_modules() if name.endswith("layers") and isinstance(m, nn.ModuleList)
    ]
    if not stacks:
        raise ValueError("found no decoder layer stack ('layers') in the model")
    return max(stacks, key=len)


def output_head(model: nn.Module) -> nn.Module:
    """The output embedding (``lm_head``), adapted or not."""
    return base_model(model).get_output_embeddings()


LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The decoder layer a module's qualified name lies in (``...layers.3.self_attn...`` -> 3)."""
    match = LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None
