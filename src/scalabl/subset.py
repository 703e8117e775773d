"""Sampling a subset of the Bayesian modules, with the unsampled start of the network run once.

``sample_modules`` names which Bayesian modules draw posterior samples at prediction; the others
use their posterior mean:

* ``"all"``: every module (the default, the method as trained);
* ``"lm_head"``: only an adapter on the output head (``lm_head`` must be a target);
* ``"last:K"``: the modules in the last K decoder layers (and on ``lm_head`` if adapted).

When every sampled module lies at or after some point of the forward (decoder layer ``L0``, or
the head), everything before that point is the same for all S samples. The fast path runs it once
for B sequences, then repeats the hidden states (and the per-sequence attention inputs) S times at
that point, so only the sampled tail runs S x B rows: the decoder layers cost
``L0 / L + S (L - L0) / L`` passes instead of S, but the output head (for a small model with a
large vocabulary, a large share of a pass) still runs S times after a branch in the layers. When
only the head's adapter samples, its frozen product ``W x`` runs once and only the rank-r adapter
term and the softmax run S times. Measured costs: ``benchmarks/speed.py``, ``docs/speed.md``.

The noise is drawn exactly as the plain loop draws it (S draws of B rows, all modules, in order),
then stacked sample-major (row ``s * B + i`` is sample s of sequence i), so the fast path and the
plain loop give the same probabilities for the same seed (tested).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from scalabl.bayesian import (
    BayesianModule,
    bayesian_modules,
    decoder_layers,
    draw_noise,
    layer_index,
    output_head,
    sampling_only,
)
from scalabl.config.predict import parse_sample_modules


@dataclass
class Subset:
    """The sampled modules and where the forward may branch into S copies."""

    sampled: list[BayesianModule]
    start_layer: int | None  # first decoder layer holding a sampled module; None: only the head
    n_layers: int

    @property
    def stackable(self) -> bool:
        """Whether the fast path applies: per-row noise that can be stacked (see module docstring)."""
        return bool(self.sampled) and all(m.stackable for m in self.sampled)


def select_subset(model: nn.Module, spec: str) -> Subset:
    """Resolve ``spec`` on ``model``; a subset with no Bayesian module in it is an error."""
    last = parse_sample_modules(spec)
    modules = bayesian_modules(model)
    try:
        layers = decoder_layers(model)
    except ValueError as err:
        if last is None:  # no layer stack to branch in: nothing stackable, the plain paths serve
            return Subset([], None, 0)
        raise ValueError(f"sample_modules: {err}") from None
    if last is None:
        return Subset(modules, 0, len(layers))
    head = output_head(model)
    in_head = {id(m) for m in head.modules()} if head is not None else set()
    names = {id(m): name for name, m in model.named_modules()}
    first = len(layers) - last
    sampled, start = [], None
    for m in modules:
        layer = layer_index(names[id(m)])
        if id(m) in in_head:
            sampled.append(m)
        elif layer is not None and last > 0 and layer >= first:
            sampled.append(m)
            start = layer if start is None else min(start, layer)
    if not sampled:
        raise ValueError(
            f"sample_modules={spec!r}: no Bayesian module there (adapted: "
            f"{sorted({names[id(m)].rsplit('.lora_A', 1)[0].split('.')[-1] for m in modules})}); "
            "adapt lm_head (targets) or sample more layers"
        )
    return Subset(sampled, start, len(layers))


def sample_only(model: nn.Module, subset: Subset):
    """Within the block only the subset's modules sample; the rest use their posterior mean."""
    chosen = {id(m) for m in subset.sampled}
    return sampling_only(model, lambda m: id(m) in chosen)


def draw_stacked_noise(
    model: nn.Module, subset: Subset, n_rows: int, copies: int, generator: torch.Generator | None
) -> None:
    """S draws of ``n_rows`` rows, as S plain passes would draw them, stacked sample-major on the
    subset's modules (the others keep none: they do not sample)."""
    parts: dict[int, list[torch.Tensor]] = {id(m): [] for m in subset.sampled}
    for _ in range(copies):
        draw_noise(model, n_rows, generator)
        for m in subset.sampled:
            parts[id(m)].append(m.noise_rows())
    for m in bayesian_modules(model):
        m.clear_noise()
    for m in subset.sampled:
        m.set_noise_rows(torch.cat(parts[id(m)]))


@dataclass
class Branch:
    """A forward that splits into ``copies`` copies where ``subset`` starts; ``rows`` is the number
    of sequences entering the forward (set before each forward)."""

    subset: Subset
    copies: int
    rows: int = 0

    def block(self, index: torch.Tensor) -> torch.Tensor:
        """The first copy's part of a sample-major index over all copies."""
        return index[: index.shape[0] // self.copies]

    def expand(self, index: torch.Tensor, n: int) -> torch.Tensor:
        """``index`` over n rows -> the same rows in every copy: ``s * n + index``, sample-major."""
        return torch.cat([index + s * n for s in range(self.copies)])


@contextmanager
def branch_into_copies(model: nn.Module, branch: Branch) -> Iterator[None]:
    """Repeat the batch ``copies`` times where the subset starts: at decoder layer ``start_layer``
    (its hidden states and every per-sequence input of the layers from there on) or at the head."""

    def repeat(t):
        # per-sequence tensors: hidden [B,T,D], mask [B,1,q,k], cos/sin [B,T,d], position ids [B,T]
        if isinstance(t, torch.Tensor) and t.dim() > 1 and t.shape[0] == branch.rows:
            return t.repeat(branch.copies, *([1] * (t.dim() - 1)))
        if isinstance(t, tuple):
            return tuple(repeat(x) for x in t)
        return t

    def layer_hook(module, args, kwargs):
        # the first branched layer gets B rows of hidden states; the next ones already S x B
        args = tuple(repeat(a) for a in args)
        kwargs = {k: (v if k in ("cache", "past_key_values") else repeat(v)) for k, v in kwargs.items()}
        return args, kwargs

    def inputs_hook(module, args):
        return tuple(repeat(a) for a in args)

    def output_hook(module, args, out):
        return repeat(out)

    handles = []
    head = output_head(model)
    if branch.subset.start_layer is not None:
        for layer in list(decoder_layers(model))[branch.subset.start_layer :]:
            handles.append(layer.register_forward_pre_hook(layer_hook, with_kwargs=True))
    elif hasattr(head, "base_layer") and hasattr(head, "lora_A"):
        # Only the head's adapter samples: its frozen product W x is the same for every sample, so
        # it runs once and its output is repeated; only the rank-r adapter term runs S x B rows.
        handles.append(head.base_layer.register_forward_hook(output_hook))
        for lora_a in head.lora_A.values():
            handles.append(lora_a.register_forward_pre_hook(inputs_hook))
    else:
        handles.append(head.register_forward_pre_hook(inputs_hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def select_cache_rows(cache, index: torch.Tensor, branch: Branch | None) -> None:
    """Re-index a KV cache. Under a branch, ``index`` addresses the S x B copies: the layers from the
    branch on hold all copies, the layers before it only the first (they take the first block)."""
    if branch is None:
        cache.batch_select_indices(index)
        return
    start = branch.subset.start_layer if branch.subset.start_layer is not None else len(cache.layers)
    for i, layer in enumerate(cache.layers):
        layer.batch_select_indices(index if i >= start else branch.block(index))
