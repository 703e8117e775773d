"""Where ``scalabl bench`` runs its cells (``BackendConfig``): in this process (the default, shared
with other processes through claim files) or as Ray tasks (:mod:`scalabl.bench_ray`)."""

from __future__ import annotations

from dataclasses import dataclass

from scalabl.choices import Backend
from scalabl.config.fields import JSONConfig, coerce_choices, option


@dataclass
class BackendConfig(JSONConfig):
    """The bench's scheduler and, for Ray, what each cell asks of the cluster."""

    label = "backend config"

    backend: Backend = option(Backend.LOCAL, "run cells in this process (local) or as Ray tasks (ray)")
    ray_address: str | None = option(
        None,
        "Ray cluster to join ('auto': the one this machine belongs to); none: start a local Ray",
        shown="none",
    )
    ray_cpus: int | None = option(None, "CPUs a local Ray may use", shown="all of this machine's")
    cpus_per_cell: float = option(1.0, "CPUs a cell's Ray task reserves")
    gpus_per_cell: float = option(0.0, "GPUs a cell's Ray task reserves (fractions share a GPU)")
    retries: int = option(1, "times a failed cell is retried before it is reported")

    def __post_init__(self) -> None:
        coerce_choices(self)
        if self.cpus_per_cell < 0 or self.gpus_per_cell < 0:
            raise ValueError("cpus_per_cell, gpus_per_cell: must be >= 0")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries: must be an integer >= 0, got {self.retries!r}")
        if self.ray_cpus is not None and self.ray_cpus < 1:
            raise ValueError(f"ray_cpus: must be >= 1, got {self.ray_cpus!r}")
        if self.backend == Backend.LOCAL and (self.ray_address or self.ray_cpus):
            raise ValueError("ray_address, ray_cpus: only with backend 'ray'")
