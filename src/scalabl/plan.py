"""``scalabl plan``: sizes and memory of a (Bayesian) LoRA run, from the model's config alone.

The model is built on the meta device (no weights, no memory), so any size can be planned on a
laptop: base parameters, LoRA parameters, the method's extra parameters, and an estimate of the
peak memory of training and of inference on one device.

The memory model (bytes; ``T`` tokens per micro-batch = batch x sequence length, ``h`` hidden
size, ``L`` layers, ``V`` vocabulary, ``w`` bytes per activation element of the compute dtype):

* weights: the base parameters at their dtype; 4-bit / 8-bit quantisation (bitsandbytes) stores
  the decoder's linear weights at 0.5625 / 1.0625 bytes (with the quantisation constants), and
  embeddings, norms and ``lm_head`` at the compute dtype;
* trainable state, float32: LoRA and variational parameters x (weight + gradient + 2 AdamW moments)
  = 16 bytes each; an ensemble holds K adapters but trains one at a time;
* activations kept for the backward pass: ``L T w (52 h + 4 I)`` per step without recomputation
  (``I`` the MLP size; the constants are measured, see :data:`ACT_HIDDEN`), and
  ``L T h w + T w (52 h + 4 I)`` with gradient checkpointing (each layer's input, plus one layer
  recomputed); times 1.5 for the backward pass's peak (:data:`BACKWARD_PEAK`);
* the scorer's log-probabilities: only at the answer tokens, ``3 x 4 V`` bytes per scored token
  (logits, log-softmax and its gradient in float32);
* inference: the weights, the key/value cache ``2 L n_kv d_head T_S w`` for ``T_S`` = T x S when
  the S posterior samples run as one batch, and the scored log-probabilities.

``benchmarks/plan_check.py`` compares the estimate with the measured peak on this machine.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from scalabl.architectures import default_targets, linear_names, peft_targets, resolve_targets
from scalabl.choices import EMBEDDED_MODEL, DType, LaplaceHessian, MethodName, Quant
from scalabl.config import MethodConfig, PredictConfig, RunConfig, TrainConfig
from scalabl.config.fields import coerce_choices, option, positive_ints, same_as

SHIPPED = (EMBEDDED_MODEL, "llama-2-7b", "llama-3.1-8b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b")
QUANT_BYTES = {None: None, Quant.EIGHT_BIT: 1.0625, Quant.FOUR_BIT: 0.5625}
# Elements saved for the backward pass per token and layer, in units of the hidden and MLP sizes,
# measured with torch.autograd.graph.saved_tensors_hooks on SmolLM2-135M with this scorer (prompt
# once, its KV cache copied per answer choice, grouped-query heads expanded): 1,361 MB for 327 tokens
# over 30 layers besides the log-probabilities. The textbook 34 bytes/element of Korthikanti et al.
# (2022) assumes fused attention and no cache copies, and under-counts this by about 4x.
ACT_HIDDEN = 52
ACT_INTERMEDIATE = 4
# The peak of a step is above the saved activations: the backward pass holds their gradients and
# temporaries while it frees them. benchmarks/plan_check.py measured peak / saved-estimate of 1.2-1.8
# on three Llama sizes (CPU, float32); 1.5 is the middle.
BACKWARD_PEAK = 1.5
DTYPE_BYTES = {DType.FLOAT32: 4, DType.BFLOAT16: 2, DType.FLOAT16: 2}
GB = 1024**3


@dataclass
class PlanConfig:
    """What ``scalabl plan`` sizes: the run's options that set memory, and the shape of a batch."""

    model: str = same_as(
        RunConfig, "model", help=f"shipped config ({', '.join(SHIPPED)}), config.json, model folder or hub id"
    )
    method: MethodName = same_as(MethodConfig, "method")
    rank: int = same_as(MethodConfig, "rank")
    targets: tuple[str, ...] = same_as(MethodConfig, "target_modules")
    dtype: DType = same_as(RunConfig, "dtype", default=DType.BFLOAT16)
    quant: Quant | None = same_as(RunConfig, "quant")
    batch_size: int = same_as(TrainConfig, "batch_size")
    seq_len: int = option(256, "tokens per example (prompt and answers)")
    answer_tokens: int = option(32, "answer tokens scored per example")
    n_samples: int = same_as(
        PredictConfig, "n_samples", help="posterior samples run as one batch at inference"
    )
    gradient_checkpointing: bool = same_as(RunConfig, "gradient_checkpointing")
    ensemble_size: int = same_as(MethodConfig, "ensemble_size")
    swag_rank: int = same_as(MethodConfig, "swag_rank")

    def __post_init__(self) -> None:
        coerce_choices(self)
        if self.targets is not None:
            self.targets = tuple(self.targets)
        positive_ints(self, "rank", "batch_size", "seq_len", "answer_tokens", "ensemble_size", "swag_rank")


def load_config(model: str):
    """A transformers config: a shipped name, a config.json / model folder, the embedded model, or a hub id."""
    from transformers import AutoConfig

    if model in SHIPPED:
        raw = json.loads(files("scalabl").joinpath(f"model_configs/{model}.json").read_text())
        raw.pop("_comment", None)
        return AutoConfig.for_model(**raw)
    path = Path(model)
    if path.is_file():
        raw = json.loads(path.read_text())
        raw.pop("_comment", None)
        return AutoConfig.for_model(**raw)
    try:
        return AutoConfig.from_pretrained(model)
    except OSError as err:
        raise OSError(
            f"could not read a config for {model!r}: not one of {', '.join(SHIPPED)}, a config.json, a model "
            f"folder or a reachable hub id ({str(err).splitlines()[0]})"
        ) from err


@functools.cache
def default_targets_for(model: str) -> tuple[str, ...]:
    """The modules a run of ``model`` adapts when it names none, read from the model's config alone
    (:func:`scalabl.architectures.default_targets`; built on the meta device only where peft maps none)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(model)
    mapped = peft_targets(config.model_type)
    if mapped is not None:
        return mapped
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(config)
    return default_targets(config.model_type, linear_names(net))


def adapted_linears(model, targets: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of every linear layer whose name ends in a target."""
    from torch import nn

    out = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            out.append((name, module.in_features, module.out_features))
    return out


def extra_parameters(method: str, linears: list[tuple[str, int, int]], rank: int, *, ensemble_size: int = 3,
                     laplace_hessian: str = LaplaceHessian.KRON, swag_rank: int = 10) -> int:  # fmt: skip
    """Parameters a method adds to plain LoRA with these adapted layers (tested against the real modules)."""
    lora = sum(rank * (i + o) for _, i, o in linears)
    if method == MethodName.SCALABL:
        return 2 * rank * len(linears)
    if method == MethodName.BLOB:
        return sum(rank * i for _, i, _ in linears)
    if method == MethodName.TFB:
        return (rank + 1) * len(linears)
    if method == MethodName.ENSEMBLE:
        return (ensemble_size - 1) * lora
    if method == MethodName.IVON:  # a posterior variance (IVON's Hessian) per LoRA weight
        return lora
    if method == MethodName.BLORA_XS:  # SWAG's mean, second moment and K deviations of each r x r core
        return (2 + swag_rank) * rank * rank * len(linears)
    if method == MethodName.LAPLACE:
        if laplace_hessian == LaplaceHessian.DIAG:
            return lora
        # KFAC per LoRA linear: A (in -> r): in^2 + r^2; B (r -> out): r^2 + out^2
        return sum(i * i + 2 * rank * rank + o * o for _, i, o in linears)
    return 0


@dataclass
class Plan:
    model: str
    method: str
    rank: int
    targets: tuple[str, ...]
    dtype: str
    quant: str | None
    adapted_modules: int
    base_parameters: int
    lora_parameters: int
    extra_parameters: int
    memory_gb: dict[str, float]
    assumptions: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        m = self.memory_gb
        lines = [
            f"model {self.model} ({self.dtype}{', ' + self.quant if self.quant else ''}), method {self.method}, "
            f"rank {self.rank} on {', '.join(self.targets)} ({self.adapted_modules} modules)",
            f"  base parameters   {self.base_parameters:>16,}",
            f"  LoRA parameters   {self.lora_parameters:>16,}",
            f"  extra parameters  {self.extra_parameters:>16,}  ({self.method} beyond LoRA)",
            f"  memory, training  {m['train_total']:>13.2f} GB  (weights {m['weights']:.2f}, trainable state "
            f"{m['trainable_state']:.2f}, activations {m['activations']:.2f}, log-probs {m['logprobs']:.2f})",
            f"  memory, inference {m['inference_total']:>13.2f} GB  (weights {m['weights']:.2f}, KV cache "
            f"{m['kv_cache']:.2f}, log-probs {m['inference_logprobs']:.2f}; S = {self.assumptions['n_samples']} batched)",
            "  assumptions: " + ", ".join(f"{k} {v}" for k, v in self.assumptions.items()),
        ]
        return "\n".join(lines)


def make_plan(model: str = EMBEDDED_MODEL, **options: Any) -> Plan:
    """Sizes and a memory estimate for one device; ``options`` are :class:`PlanConfig`'s fields."""
    return plan_for(PlanConfig(model=model, **options))


def plan_for(c: PlanConfig) -> Plan:
    """Sizes and a memory estimate for one device (see the module docstring for the model)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(c.model)
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(config)
    params = {id(p): p for p in net.parameters()}  # tied weights once
    base = sum(p.numel() for p in params.values())
    targets = resolve_targets(net, c.targets)
    linears = adapted_linears(net, targets)
    limit = min(min(i, o) for _, i, o in linears)
    if c.rank > limit:
        raise ValueError(f"rank: {c.rank} exceeds the smallest adapted layer's min(in, out) = {limit}")
    lora = sum(c.rank * (i + o) for _, i, o in linears)
    extra = extra_parameters(c.method, linears, c.rank, ensemble_size=c.ensemble_size, swag_rank=c.swag_rank)

    w = DTYPE_BYTES[c.dtype]
    if c.quant:
        decoder_linear = sum(
            m.weight.numel()
            for name, m in net.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in name
        )
        weights = decoder_linear * QUANT_BYTES[c.quant] + (base - decoder_linear) * w
    else:
        weights = base * w
    h, n_layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    n_kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    d_head = getattr(config, "head_dim", None) or h // config.num_attention_heads

    variational = extra if c.method in (MethodName.SCALABL, MethodName.BLOB) else 0
    trained_adapters = lora + variational  # one ensemble member trains at a time
    if c.method == MethodName.BLORA_XS:  # the r x r cores train; the SVD factors are held frozen
        trained_adapters = c.rank * c.rank * len(linears)
    ensemble = c.method == MethodName.ENSEMBLE
    held = lora * (c.ensemble_size if ensemble else 1) + extra * (not ensemble)
    trainable_state = 4 * held + 12 * trained_adapters  # weights held + grad and 2 moments of the trained
    tokens = c.batch_size * c.seq_len
    inter = getattr(config, "intermediate_size", 4 * h)
    per_layer = (ACT_HIDDEN * h + ACT_INTERMEDIATE * inter) * tokens * w  # saved for backward, one layer
    # with checkpointing: every layer's input, plus one layer's activations while it is recomputed
    saved = n_layers * tokens * h * w + per_layer if c.gradient_checkpointing else n_layers * per_layer
    activations = BACKWARD_PEAK * saved
    scored = c.batch_size * c.answer_tokens
    logprobs = 3 * 4 * vocab * scored
    kv_cache = 2 * n_layers * n_kv * d_head * tokens * max(1, c.n_samples) * w
    inference_logprobs = 4 * vocab * scored * max(1, c.n_samples)
    memory = {
        "weights": weights / GB,
        "trainable_state": trainable_state / GB,
        "activations": activations / GB,
        "logprobs": logprobs / GB,
        "train_total": (weights + trainable_state + activations + logprobs) / GB,
        "kv_cache": kv_cache / GB,
        "inference_logprobs": inference_logprobs / GB,
        "inference_total": (weights + 4 * held + kv_cache + inference_logprobs) / GB,
    }
    return Plan(
        model=c.model,
        method=c.method.value,
        rank=c.rank,
        targets=targets,
        dtype=c.dtype.value,
        quant=None if c.quant is None else c.quant.value,
        adapted_modules=len(linears),
        base_parameters=base,
        lora_parameters=lora,
        extra_parameters=extra,
        memory_gb=memory,
        assumptions={
            "batch_size": c.batch_size,
            "seq_len": c.seq_len,
            "answer_tokens": c.answer_tokens,
            "n_samples": c.n_samples,
            "gradient_checkpointing": c.gradient_checkpointing,
        },
    )
