"""``scalabl bench``: a grid of methods x tasks x seeds from one JSON file, resumable, with tables.

The config file::

    {
      "out": "runs/bench",
      "tasks": ["arc_easy", "obqa"],
      "seeds": [0, 1, 2],
      "base": {"max_test": 100, "n_samples": [4, 0], "train": {"steps": 40}},
      "methods": {
        "mle": {},
        "scalabl": {"method": {"method": "scalabl"}, "train": {"variational_lr": 0.02}},
        "temperature": {"method": {"method": "temperature"}, "from": "mle"}
      },
      "ood": {"obqa": ["arc_c", "arc_e", "mmlu_chemistry", "mmlu_physics"]}
    }

Each cell is one run (:func:`scalabl.runs.train_run`) of ``base`` + the method's overrides, on the
task, with ``train.seed`` = the seed (the splits stay fixed: seeds vary initialisation, data order
and noise). A method with ``"from": "mle"`` starts from that method's cell of the same task and
seed (post-hoc methods); ``"tasks": [...]`` runs a method on some of the tasks only. A cell's folder is named by a hash of its full config, so a finished cell
(``metrics.json`` present) is skipped when the bench runs again, and a changed config runs anew.

``"archive"`` (optional) names a folder kept with the repository that holds finished cells' small
files (config, metrics, predictions, history, report; no adapters), laid out like ``out/cells``.
Cells found there count as done, so a fresh checkout continues a grid where the last machine
stopped; ``scalabl bench CONFIG --archive`` copies the finished cells of ``out`` into it. A post-hoc
cell whose source finished only in the archive re-runs the source first (same config and seed: the
same adapter) to get its weights.

``"models"`` (optional) makes the file one grid per model: each entry names overrides of ``base``
and of single methods, merged key by key (``{"qwen": {"base": {"model": "Qwen/Qwen2.5-7B", "train":
{"batch_size": 2}}, "methods": {"scalabl": {"train": {"kl_lr": 0.2}}}}}``); model NAME's grid is in
``out/NAME`` (and ``archive/NAME``) with its own tables (:meth:`BenchConfig.for_model`;
``scalabl bench CONFIG --models A,B`` runs some of them). benchmarks/suite/paper.json is one.

Several processes can share a grid: start each with ``--share`` (each claims the next free group of
a root method's cell and its post-hoc cells through a file under ``out/claims``) or with ``--shard
I/N`` (a fixed round-robin part each).

Outputs in ``out``: one table per metric with mean +- std over seeds (rows: method, columns: task;
and the shifted tasks), as ``tables/METRIC.md``, ``.csv`` and ``.tex``; paired tables of every
metric against a reference method (``"reference"``, default the first method): each
method's difference to it on the same task and seed, mean ± std, and on how many seeds it is better
(``tables/METRIC_vs_REFERENCE.md``); ``summary.md`` with all tables; and ``reliability_TASK.png``
and ``selective_TASK.png`` (risk-coverage curves) per task with every method's predictions pooled
over seeds.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from scalabl.api import ADAPTER_FILE
from scalabl.bench_tables import TABLE_FILES, write_tables
from scalabl.cell_hash import cell_digest
from scalabl.config import RunConfig
from scalabl.config.fields import check_fields
from scalabl.io import atomic_path, claim, output_folder
from scalabl.run_folder import (
    CONFIG_FILE,
    GENERATIONS_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    REPORT_FILE,
    RunFolder,
)
from scalabl.runs import train_run

# a cell's small files, kept in the archive (no weights)
ARCHIVED_FILES = (CONFIG_FILE, METRICS_FILE, PREDICTIONS_FILE, GENERATIONS_FILE, HISTORY_FILE, REPORT_FILE)
# everything a bench writes at the top of ``out`` (its cells, claims and tables)
BENCH_FILES = ("cells", "claims", "tables", *(p for p in TABLE_FILES if "/" not in p))


@dataclass
class BenchConfig:
    """A grid of runs: see the module docstring."""

    tasks: list[str]
    methods: dict[str, dict[str, Any]]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    base: dict[str, Any] = field(default_factory=dict)
    ood: dict[str, list[str]] = field(default_factory=dict)
    out: str = "runs/bench"
    archive: str | None = None
    reference: str | None = None  # the method the paired tables compare against (default: the first)
    # several models, each one grid of its own (see :meth:`for_model`): name -> {"base": ..., "methods": ...}
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks: at least one task is needed")
        if not self.methods:
            raise ValueError("methods: at least one method is needed")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: need one or more distinct seeds, got {self.seeds}")
        names = list(self.methods)
        for label, spec in self.methods.items():
            unknown = sorted(set(spec) - {"method", "train", "run", "from", "tasks"})
            if unknown:
                raise ValueError(
                    f"methods.{label}: unknown key {unknown[0]!r}; allowed: method, train, run, from, tasks"
                )
            source = spec.get("from")
            if source is not None and (source not in names or names.index(source) >= names.index(label)):
                raise ValueError(f"methods.{label}.from: {source!r} must be a method listed before {label!r}")
            outside = sorted(set(self.method_tasks(label)) - set(self.tasks))
            if outside or not self.method_tasks(label):
                raise ValueError(f"methods.{label}.tasks: name one or more of the tasks {self.tasks}")
            if source is not None and not set(self.method_tasks(label)) <= set(self.method_tasks(source)):
                raise ValueError(f"methods.{label}.tasks: must be among its source {source!r}'s tasks")
        for task in self.ood:
            if task not in self.tasks:
                raise ValueError(f"ood: {task!r} is not one of the tasks {self.tasks}")
        if self.reference is not None and self.reference not in self.methods:
            raise ValueError(f"reference: {self.reference!r} is not one of the methods {names}")
        for name, spec in self.models.items():
            unknown = sorted(set(spec) - {"base", "methods"})
            if unknown:
                raise ValueError(f"models.{name}: unknown key {unknown[0]!r}; allowed: base, methods")
            extra = sorted(set(spec.get("methods", {})) - set(names))
            if extra:
                raise ValueError(f"models.{name}.methods: {extra[0]!r} is not one of the methods {names}")
        if self.models:
            for name in self.models:  # each model's grid validates its cells
                self.for_model(name)
            return
        for label, task, seed in self.grid():  # every cell's config must validate up front
            self.run_config(label, task, seed)

    def for_model(self, name: str) -> BenchConfig:
        """The grid of one of ``models``: ``base`` and the methods with that model's overrides merged
        in (nested sections key by key), in ``out/NAME`` (and ``archive/NAME``)."""
        if name not in self.models:
            raise ValueError(f"model: {name!r} is not one of the bench's models {list(self.models)}")
        spec = self.models[name]
        overrides = spec.get("methods", {})
        return BenchConfig(
            tasks=self.tasks,
            methods={label: merged(m, overrides.get(label, {})) for label, m in self.methods.items()},
            seeds=self.seeds,
            base=merged(self.base, spec.get("base", {})),
            ood=self.ood,
            out=str(Path(self.out) / name),
            archive=None if self.archive is None else str(Path(self.archive) / name),
            reference=self.reference,
        )

    def grids(self, names: list[str] | None = None) -> list[BenchConfig]:
        """The grids to run: one per model named (default: all of ``models``), or this one."""
        if not self.models:
            if names:
                raise ValueError("models: this bench config lists no models to choose from")
            return [self]
        return [self.for_model(n) for n in (names or list(self.models))]

    @classmethod
    def from_file(cls, path: str | Path) -> BenchConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from err
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object")
        check_fields(cls, raw, f"bench config {path}")
        return cls(**raw)

    def method_tasks(self, label: str) -> list[str]:
        """The tasks a method runs on: its ``"tasks"`` if it names some, else all of them."""
        return list(self.methods[label].get("tasks", self.tasks))

    def grid(self) -> list[tuple[str, str, int]]:
        """Every cell (method label, task, seed), tasks outermost, methods innermost (sources first)."""
        return [
            (label, task, seed)
            for task in self.tasks
            for seed in self.seeds
            for label in self.methods
            if task in self.method_tasks(label)
        ]

    def root(self, label: str) -> str:
        """The method a cell's chain of ``"from"`` sources starts at (itself if it has none)."""
        while self.methods[label].get("from"):
            label = self.methods[label]["from"]
        return label

    def groups(self) -> list[tuple[tuple[str, str, int], list[tuple[str, str, int]]]]:
        """The grid's cells grouped by (root method, task, seed), in grid order: a post-hoc cell is in
        its source's group, so whoever runs a group trains the adapter its post-hoc cells start from."""
        groups: dict[tuple[str, str, int], list[tuple[str, str, int]]] = {}
        for label, task, seed in self.grid():
            groups.setdefault((self.root(label), task, seed), []).append((label, task, seed))
        return list(groups.items())

    def shard_groups(
        self, index: int, count: int
    ) -> list[tuple[tuple[str, str, int], list[tuple[str, str, int]]]]:
        """The groups of :meth:`groups` that shard ``index`` of ``count`` runs, dealt out round-robin
        in grid order (a post-hoc cell stays with its source, so two processes never train the same
        adapter)."""
        if not 0 <= index < count:
            raise ValueError(f"shard: index must be in 0..{count - 1}, got {index}")
        return [group for i, group in enumerate(self.groups()) if i % count == index]

    def shard_cells(self, index: int, count: int) -> list[tuple[str, str, int]]:
        """The cells shard ``index`` of ``count`` runs (see :meth:`shard_groups`)."""
        return [cell for _, cells in self.shard_groups(index, count) for cell in cells]

    def claim_path(self, key: tuple[str, str, int]) -> Path:
        """The claim file of a group (see ``run_bench(share=True)``): named like its root cell's
        folder, config hash included, so only processes running that very cell contend for it."""
        parts = self.cell_dir(*key).relative_to(Path(self.out) / "cells").parts
        return Path(self.out) / "claims" / "-".join(parts)  # flat: released claims leave no folders

    def output(self, *, overwrite: bool = False) -> AbstractContextManager[Path]:
        """Guard the writes into ``out``: a grid continues in its own folder, but a folder holding
        anything a bench does not write is refused unless ``overwrite`` (:func:`scalabl.io.output_folder`)."""
        return output_folder(
            self.out, BENCH_FILES, overwrite=overwrite, continues=True, command="scalabl bench"
        )

    def run_config(self, label: str, task: str, seed: int) -> RunConfig:
        spec = self.methods[label]
        run = merged(self.base, {**spec.get("run", {}), "task": task, "ood": self.ood.get(task, [])})
        run["method"] = merged(run.get("method", {}), {"method": label, **spec.get("method", {})})
        run["train"] = merged(run.get("train", {}), {**spec.get("train", {}), "seed": seed})
        if spec.get("from"):
            run["from_run"] = str(self.cell_dir(spec["from"], task, seed))
        return RunConfig.from_dict(run)

    def finished_dir(self, label: str, task: str, seed: int) -> Path | None:
        """Where the cell's results are: its folder under ``out``, else in the archive, else None."""
        here = self.cell_dir(label, task, seed)
        if (here / METRICS_FILE).is_file():
            return here
        if self.archive is not None:
            kept = Path(self.archive) / here.relative_to(self.out)
            if (kept / METRICS_FILE).is_file():
                return kept
        return None

    def cell_dir(self, label: str, task: str, seed: int) -> Path:
        digest = cell_digest(self.run_config(label, task, seed))
        return (
            Path(self.out)
            / "cells"
            / label
            / task.replace(":", "_").replace("/", "_")
            / f"seed{seed}-{digest}"
        )


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged in: nested dicts key by key, anything else replaced."""
    out = json.loads(json.dumps(base))  # a deep copy
    for key, value in changes.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


Group = tuple[tuple[str, str, int], list[tuple[str, str, int]]]


def selected_groups(
    config: BenchConfig, *, shard: tuple[int, int] | None = None, methods: list[str] | None = None
) -> list[Group]:
    """The groups of cells a bench runs (:meth:`BenchConfig.groups`): shard ``(index, count)``'s only,
    and of the root ``methods`` only, if given."""
    groups = config.groups() if shard is None else config.shard_groups(*shard)
    if methods is not None:
        roots = {config.root(label) for label in config.methods}
        unknown = sorted(set(methods) - roots)
        if unknown:
            raise ValueError(
                f"methods: {unknown[0]!r} is not a trained method of the grid; choose from {sorted(roots)}"
            )
        groups = [(key, cells) for key, cells in groups if key[0] in methods]
    return groups


def run_bench(
    config: BenchConfig,
    *,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    share: bool = False,
    overwrite: bool = False,
    methods: list[str] | None = None,
) -> dict[str, Any]:
    """Run every missing cell, then write the tables of every finished cell; returns the collected
    results.

    Several processes can share one grid: with ``shard=(index, count)`` each runs a fixed part of it
    (:meth:`BenchConfig.shard_cells`); with ``share=True`` each takes the next group of cells no other
    process has claimed (a claim file under ``out/claims``), so any number of processes started the
    same way keep busy until the grid is done, however unequal the cells' costs.

    ``methods``: run only the groups whose root method is one of these (a method and the post-hoc
    cells started from it); the tables still cover every finished cell.

    ``config.out`` continues a grid of its own; a folder holding anything else is refused unless
    ``overwrite`` (see :func:`scalabl.io.output_folder`).
    """
    if shard is not None and share:
        raise ValueError("bench: choose --shard I/N or --share, not both")
    groups = selected_groups(config, shard=shard, methods=methods)
    total = sum(len(cells) for _, cells in groups)
    done = sum(config.finished_dir(*c) is not None for _, cells in groups for c in cells)
    with config.output(overwrite=overwrite):
        bar = tqdm(total=total, initial=done, desc="bench cells", disable=not progress, unit="cell")
        for key, cells in groups:
            todo = [c for c in cells if config.finished_dir(*c) is None]
            if not todo:
                continue
            with claim(config.claim_path(key)) if share else nullcontext(True) as ours:
                if ours:
                    for cell in todo:
                        run_cell(config, cell, bar)
        bar.close()
        results = collect(config)
        write_tables(config, results)
    return results


def run_cell(config: BenchConfig, cell: tuple[str, str, int], bar: Any) -> None:
    """Run one cell (and its source's, when only the archive has that): an unfinished cell's folder
    holds the bench's own leftovers, which the run replaces."""
    label, task, seed = cell
    if config.finished_dir(label, task, seed) is not None:
        bar.update(1)  # finished meanwhile by another bench process on the same grid
        return
    bar.set_postfix_str(f"{label} {task} seed {seed}")
    t0 = time.perf_counter()
    source = config.methods[label].get("from")
    if source and not (config.cell_dir(source, task, seed) / ADAPTER_FILE).is_file():
        # finished in the archive, which keeps no weights: re-run it (deterministic) for them
        bar.write(f"re-running {source} {task} seed {seed} for its adapter")
        source_dir = config.cell_dir(source, task, seed)
        train_run(config.run_config(source, task, seed), source_dir, progress=False, overwrite=True)
    train_run(
        config.run_config(label, task, seed),
        config.cell_dir(label, task, seed),
        progress=False,
        overwrite=True,
    )
    bar.update(1)
    bar.write(f"done {label} {task} seed {seed} in {time.perf_counter() - t0:.0f} s")


def collect(config: BenchConfig) -> dict[str, Any]:
    """metrics.json of every finished cell: results[label][task][seed]."""
    results: dict[str, Any] = {}
    for label, task, seed in config.grid():
        found = config.finished_dir(label, task, seed)
        if found is not None:
            results.setdefault(label, {}).setdefault(task, {})[seed] = RunFolder(found).read_metrics()
    return results


def archive_cells(config: BenchConfig) -> int:
    """Copy the small files of every cell finished under ``out`` into ``config.archive``, and the
    tables and plots of :func:`write_tables` with them; returns how many cells were archived."""
    if config.archive is None:
        raise ValueError("archive: the bench config names no archive folder")
    for pattern in TABLE_FILES:
        for here in sorted(Path(config.out).glob(pattern)):
            with atomic_path(Path(config.archive) / here.relative_to(config.out)) as tmp:
                shutil.copyfile(here, tmp)
    n = 0
    for label, task, seed in config.grid():
        here = config.cell_dir(label, task, seed)
        if not (here / METRICS_FILE).is_file():
            continue
        kept = Path(config.archive) / here.relative_to(config.out)
        for name in ARCHIVED_FILES:
            if (here / name).is_file():
                with atomic_path(kept / name) as tmp:
                    shutil.copyfile(here / name, tmp)
        n += 1
    return n
