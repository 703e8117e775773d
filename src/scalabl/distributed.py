"""Data parallelism over processes started by ``accelerate launch`` (or ``torchrun``).

Every process holds the whole model and adapter. ``batch_size`` stays the *global* batch: all
processes follow the same batch order (one seeded stream), each scores its rows ``rank::world``
of the batch with the noise rows the single process would draw for them, and the adapter's
gradients are averaged over processes before the optimiser step. The KL (and MAP's prior) is
added once per process divided by the full training-set size N, so after averaging it counts
once, not once per process. So ``world`` processes follow the same training trajectory as one
process with the same global batch, up to float summation order (tested with 2 gloo processes).

LoRA gradients are small (a few MB even for a 7B model), so a plain all-reduce after backward
costs little; the base weights are frozen and never communicated. Evaluation splits the examples
across processes and gathers the predictions on every process; only the main process writes.

FSDP (``--fsdp``, for a base that does not fit one device): each decoder layer is sharded over the
processes with ``torch.distributed.fsdp.fully_shard`` (FSDP2), its weights, adapter and posterior
parameters included; a layer's weights are gathered for its forward and backward and freed after.
The embeddings, final norm and head stay whole on every process. FSDP averages the sharded
gradients itself (reduce-scatter); the KL of a sharded posterior is computed on each process's
shard, so it too counts once. Every process must then run the same forwards, so evaluation is not
split, and training writes no resumable checkpoint (the final adapter is gathered and saved).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from scalabl.bayesian import decoder_layers

T = TypeVar("T")


def launched() -> bool:
    """Whether this process was started as one of several (``WORLD_SIZE`` > 1 in the environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Join the process group that the launcher set up (gloo on CPU, nccl on GPUs), once."""
    if launched() and not dist.is_initialized():
        from accelerate import PartialState

        PartialState()  # reads RANK/WORLD_SIZE/MASTER_ADDR and initialises torch.distributed


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def my_rows(n: int) -> list[int]:
    """This process's rows of a global batch of n: ``rank, rank + world, ...``."""
    if n % world():
        raise ValueError(f"batch_size: the global batch {n} must be a multiple of the {world()} processes")
    return list(range(rank(), n, world()))


def sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` is an FSDP-sharded parameter (a DTensor)."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded one (a collective: every process must call it); else ``t``."""
    return t.full_tensor() if sharded(t) else t


def shard_model(model: torch.nn.Module) -> None:
    """FSDP2: shard each decoder layer of ``model`` over the processes (see the module docstring)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (world(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """All-reduce the gradients of ``params`` to their mean over processes (one flat buffer).
    FSDP-sharded parameters are skipped: FSDP has averaged theirs."""
    if world() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None and not sharded(p)]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def mean(value: float) -> float:
    """The mean of a float over processes."""
    if world() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / world()


def shard(items: Sequence[T]) -> list[T]:
    """This process's share of ``items`` for evaluation: every ``world``-th, from ``rank``."""
    return list(items[rank() :: world()])


def unshard(part: torch.Tensor, n: int, dim: int = 0) -> torch.Tensor:
    """Gather every process's :func:`shard` result along ``dim`` and restore the original order."""
    if world() == 1:
        return part
    parts: list[torch.Tensor | None] = [None] * world()
    dist.all_gather_object(parts, part.cpu())
    shape = list(part.shape)
    shape[dim] = n
    out = torch.empty(shape, dtype=part.dtype)
    for r, p in enumerate(parts):
        index = torch.arange(r, n, world())
        out.index_copy_(dim, index, p)
    return out


def barrier() -> None:
    if world() > 1:
        dist.barrier()
