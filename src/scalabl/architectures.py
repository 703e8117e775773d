"""What differs between the decoder architectures a user brings: which modules get an adapter when
none are named, and what the output head does to its logits.

Default targets: peft's per-architecture mapping (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``,
``q_proj`` and ``v_proj`` for Llama, Qwen2/3, Gemma 2/3 and Mistral); for a model type peft does not
map, ``q_proj`` and ``v_proj`` when the model has both (OLMo 2); otherwise the model is refused with
the names of the linear modules it has, to choose from (Phi-3 fuses its projections into ``qkv_proj``
and ``gate_up_proj``: an adapter on ``qkv_proj`` is one low-rank update of all three).

Output head: Gemma 2 soft-caps its logits (``tanh(z / c) c``), Cohere multiplies them by
``logit_scale`` and Granite divides them by ``logits_scaling``; :func:`output_logits` applies what the
model's own ``forward`` applies, so a scorer that runs the head itself scores what the model does.

torch is imported where it is used: ``scalabl plan`` and the CLI read this module before any model.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

LITERATURE_TARGETS = ("q_proj", "v_proj")


def linear_names(model: nn.Module) -> list[str]:
    """The distinct last names of the model's linear layers (``q_proj``, ``qkv_proj``, ``lm_head``...),
    in the order they first appear."""
    from torch import nn

    names: dict[str, None] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name:
            names.setdefault(name.rsplit(".", 1)[-1], None)
    return list(names)


def peft_targets(model_type: str) -> tuple[str, ...] | None:
    """peft's default LoRA targets for a model type, or None where peft has none."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAPPING

    found = MAPPING.get(model_type)
    return None if found is None else tuple(found)


def default_targets(model_type: str, names: Iterable[str]) -> tuple[str, ...]:
    """The modules that get an adapter when the user names none (see the module docstring);
    ``names`` are the model's linear layers (:func:`linear_names`)."""
    mapped = peft_targets(model_type)
    if mapped is not None:
        return mapped
    names = list(names)
    if set(LITERATURE_TARGETS) <= set(names):
        return LITERATURE_TARGETS
    raise ValueError(
        f"target_modules: no default for model type {model_type!r} (peft maps none, and it has no "
        f"q_proj and v_proj); name them (--targets) from its linear layers: {', '.join(names)}"
    )


def resolve_targets(model: nn.Module, targets: tuple[str, ...] | None) -> tuple[str, ...]:
    """``targets`` checked against the model, or its defaults when None: a name that matches no linear
    layer is refused with the names that exist (a fused model has no ``q_proj``)."""
    names = linear_names(model)
    if targets is None:
        config = getattr(model, "config", None)
        return default_targets(getattr(config, "model_type", ""), names)
    missing = [t for t in targets if t.rsplit(".", 1)[-1] not in names]
    if missing:
        fused = (
            " (its projections are fused)"
            if any(n.endswith(("qkv_proj", "gate_up_proj")) for n in names)
            else ""
        )
        raise ValueError(
            f"target_modules: {', '.join(missing)} matched no linear layer of the model{fused}; "
            f"its linear layers are: {', '.join(names)}"
        )
    return tuple(targets)


def tied_head(model: nn.Module) -> bool:
    """Whether the output head shares its weight with the input embeddings (Qwen2 small, Gemma, SmolLM2)."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and embed is not None and head.weight is embed.weight


@contextmanager
def untied_head_adapter() -> Iterator[None]:
    """Adapters are added with a tied head's adapter on the head alone: the input embeddings stay the
    base's. peft warns that this differs from tying the adapters too (``ensure_weight_tying``), which
    matters when an adapter is merged into the shared weight; scalabl never merges, and
    :func:`scalabl.export.export_peft` notes it for whoever does."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*tie_word_embeddings=True.*ensure_weight_tying", category=UserWarning
        )
        yield


def output_logits(model: nn.Module, head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``head(hidden)`` with the model's own post-processing of its logits (soft-capping, scaling),
    read from ``model.config`` as its ``forward`` reads it."""
    import torch

    config = getattr(model, "config", None)
    logits = head(hidden)
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    scale = getattr(config, "logit_scale", None)  # Cohere
    if scale is not None:
        logits = logits * scale
    divisor = getattr(config, "logits_scaling", None)  # Granite
    if divisor is not None:
        logits = logits / divisor
    return logits
