"""``scalabl bench --backend ray``: the same grid, cell hashes, archive and tables, with each group of
cells (a trained cell and the post-hoc cells started from it) run as one Ray task (the ``ray`` extra).

A group runs on one worker, so a post-hoc cell finds its source's adapter on that worker's disk.
Each task sends the cell's small files (config, metrics, predictions, history, report: what the
archive keeps) back to the driver, which writes any it lacks into ``out``: the tables are made on
the driver from the same files as with the local backend, and a cluster needs no shared folder
(the weights stay where they were trained). A task that fails is submitted again ``retries`` times
(a group resumes: its finished cells are skipped), then reported; the other groups finish.

``ray_address=None`` starts a local Ray (``ray_cpus`` CPUs) and stops it at the end; ``"auto"`` or
``ray://HOST:10001`` joins a running cluster; if Ray is already initialised in this process, that
one is used as it is. Each task reserves ``cpus_per_cell`` CPUs and ``gpus_per_cell`` GPUs; Ray
sets a task's ``OMP_NUM_THREADS`` to its CPUs (unless the environment sets it) and its
``CUDA_VISIBLE_DEVICES`` to its GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from tqdm.auto import tqdm

from scalabl.bench import ARCHIVED_FILES, BenchConfig, Group, collect, run_cell, selected_groups, write_tables
from scalabl.config.backend import BackendConfig
from scalabl.io import atomic_path
from scalabl.run_folder import METRICS_FILE

# metrics.json last: a cell with it counts as finished, so its other files must be there first
_WRITE_ORDER = tuple(n for n in ARCHIVED_FILES if n != METRICS_FILE) + (METRICS_FILE,)


@dataclass
class CellFailure:
    """A group of cells that failed on every attempt."""

    cells: list[tuple[str, str, int]]
    attempts: int
    error: str

    def __str__(self) -> str:
        names = ", ".join(f"{label} {task} seed {seed}" for label, task, seed in self.cells)
        return f"{names}: failed {self.attempts} times; last error: {self.error}"


class _Silent:
    """What :func:`scalabl.bench.run_cell` reports to, inside a task (the driver shows progress)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, flush=True)  # Ray forwards a task's output to the driver's log


def run_group(config: BenchConfig, cells: list[tuple[str, str, int]], cwd: str) -> dict[str, bytes]:
    """The body of a group's Ray task: run its unfinished cells in order, return their small files
    by path relative to ``config.out``. Relative paths of the config (``out``, models) mean what they
    mean on the driver, whose folder ``cwd`` is where it exists (a worker starts elsewhere; a cell's
    hash holds its paths as written, so they are not made absolute)."""
    if Path(cwd).is_dir():
        os.chdir(cwd)
    for cell in cells:
        run_cell(config, cell, _Silent())
    files = {}
    for cell in cells:
        here = config.cell_dir(*cell)
        for name in ARCHIVED_FILES:
            if (here / name).is_file():
                files[str((here / name).relative_to(config.out))] = (here / name).read_bytes()
    return files


def _write_back(config: BenchConfig, files: dict[str, bytes]) -> None:
    """Write the files a task sent where ``out`` lacks them (or holds other bytes), atomically."""
    by_name = sorted(files.items(), key=lambda item: _WRITE_ORDER.index(Path(item[0]).name))
    for relative, data in by_name:
        target = Path(config.out) / relative
        if target.is_file() and target.read_bytes() == data:
            continue  # the driver shares the worker's disk
        with atomic_path(target) as tmp:
            Path(tmp).write_bytes(data)


def _error_text(err: BaseException) -> str:
    cause = getattr(err, "cause", None)  # a task's own exception, under Ray's wrapper
    return f"{type(cause).__name__}: {cause}" if cause is not None else f"{type(err).__name__}: {err}"


def run_bench_ray(
    config: BenchConfig,
    backend: BackendConfig,
    *,
    progress: bool = True,
    overwrite: bool = False,
    methods: list[str] | None = None,
) -> tuple[dict[str, Any], list[CellFailure]]:
    """Run every unfinished group of ``config`` as a Ray task, then write the tables of every finished
    cell (as :func:`scalabl.bench.run_bench` does); returns the results and the groups that failed."""
    groups: list[Group] = [
        (key, todo)
        for key, cells in selected_groups(config, methods=methods)
        if (todo := [c for c in cells if config.finished_dir(*c) is None])
    ]
    failures: list[CellFailure] = []
    with config.output(overwrite=overwrite):
        started = not ray.is_initialized()
        if started:
            options = {} if backend.ray_address else {"num_cpus": backend.ray_cpus}
            ray.init(address=backend.ray_address, include_dashboard=False, **options)
        try:
            task = ray.remote(run_group).options(
                num_cpus=backend.cpus_per_cell, num_gpus=backend.gpus_per_cell, max_retries=0
            )
            driver_cwd = os.getcwd()
            pending = {task.remote(config, cells, driver_cwd): (cells, 1) for _, cells in groups}
            bar = tqdm(
                total=sum(len(c) for _, c in groups), desc="bench cells", disable=not progress, unit="cell"
            )
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                cells, attempt = pending.pop(ref)
                try:
                    files = ray.get(ref)
                except ray.exceptions.RayError as err:
                    if attempt <= backend.retries:
                        bar.write(
                            f"retrying {cells[0][0]} {cells[0][1]} seed {cells[0][2]}: {_error_text(err)}"
                        )
                        pending[task.remote(config, cells, driver_cwd)] = (cells, attempt + 1)
                    else:
                        failures.append(CellFailure(cells, attempt, _error_text(err)))
                        bar.write(f"failed: {failures[-1]}")
                    continue
                _write_back(config, files)
                bar.update(len(cells))
            bar.close()
        finally:
            if started:
                ray.shutdown()
        results = collect(config)
        write_tables(config, results)
    return results, failures
