"""The papers' protocol (benchmarks/suite/paper.json): its settings are the literature's, and a cut of
its grid that reaches every code path runs two steps per cell on tiny random models of the same architectures (Llama for Llama-2-7B,
Qwen2 for Qwen2.5-7B/32B): for the first model, mle and scalabl-paper on every task and every method
on OBQA (the task with shifted evaluations); for the others, whose cells differ from the first's only
in their model and learning rates, mle and scalabl-paper on OBQA."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from scalabl.bench import BenchConfig, merged, run_bench
from scalabl.config import RunConfig
from scalabl.results import entry, headline
from scalabl.run_folder import RunFolder
from scalabl.testing import save_tiny_architecture

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "benchmarks" / "suite" / "paper.json"
ARCHITECTURE = {"llama-2-7b": "llama", "qwen2.5-7b": "qwen2", "qwen2.5-32b": "qwen2"}
# The dry run's shrinking: what makes a cell fast, nothing that changes what the cell does.
# The data come from the offline copies (tests reach no hub); the "paper" source is tested in test_tasks.
DRY = {
    "source": "offline",
    "max_train": 8,
    "max_test": 6,
    "max_validation": 4,
    "n_samples": [2],
    "eval_batch_size": 8,
    "method": {"ensemble_size": 2, "laplace_max_train": 4, "tfb_samples": 2, "tfb_search_steps": 2},
    "train": {"steps": 2, "checkpoint_every": 0, "val_size": 4},  # the curve still drawn, on 4 questions
}

EVERY_TASK = (
    "mle",
    "scalabl-paper",
)  # the first model's methods run on every task (letters of 2 to 5 choices)


def test_the_preset_is_the_papers_protocol():
    bench = BenchConfig.from_file(PRESET)
    models = {n: bench.for_model(n).base["model"] for n in bench.models}
    assert models == {
        "llama-2-7b": "meta-llama/Llama-2-7b-hf",
        "qwen2.5-7b": "Qwen/Qwen2.5-7B",
        "qwen2.5-32b": "Qwen/Qwen2.5-32B",
    }
    for name in bench.models:
        grid = bench.for_model(name)
        run: RunConfig = grid.run_config("scalabl-paper", "obqa", 0)
        assert run.scoring == "letter" and run.max_length == 300 and run.dtype == "bfloat16"
        assert run.source == "paper" and run.n_samples == (10,)
        assert run.method.rank == 8 and run.method.alpha == 16
        assert run.method.target_modules == ("q_proj", "v_proj", "lm_head")
        assert run.method.sigma_init == 0.05 and run.method.kl_direction == "reference"
        t = run.train
        assert (t.lr, t.adam_eps, t.warmup_ratio, t.steps, t.recipe) == (1e-4, 1e-6, 0.06, 5000, "blob")
        assert t.batch_size == (2 if name == "qwen2.5-32b" else 4)
        assert t.kl_lr == (0.2 if name == "qwen2.5-7b" else 0.1)
        ours = grid.run_config("scalabl", "obqa", 0)  # the corrected default beside it
        assert ours.method.kl_direction == "correct" and ours.train.recipe == "elbo"
        assert grid.out == str(Path("runs/paper") / name)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[list[BenchConfig], dict[str, dict]]:
    tmp = tmp_path_factory.mktemp("paper")
    raw = json.loads(PRESET.read_text())
    raw["seeds"] = raw["seeds"][:1]  # seeds vary only the initialisation: one runs every code path
    raw["base"] = merged(raw["base"], DRY)
    raw["out"] = str(tmp / "runs")
    folders = {a: save_tiny_architecture(tmp / a, a) for a in set(ARCHITECTURE.values())}
    for name, spec in raw["models"].items():
        spec["base"]["model"] = str(folders[ARCHITECTURE[name]])
    for label, spec in raw["methods"].items():
        spec["tasks"] = raw["tasks"] if label in EVERY_TASK else ["obqa"]
    (tmp / "paper.json").write_text(json.dumps(raw))
    first, *others = BenchConfig.from_file(tmp / "paper.json").grids()
    grids = [first] + [
        replace(
            g, methods={k: merged(v, {"tasks": ["obqa"]}) for k, v in g.methods.items() if k in EVERY_TASK}
        )
        for g in others
    ]
    return grids, {grid.out: run_bench(grid, progress=False) for grid in grids}


def test_every_cell_of_every_model_runs(dry_run):
    grids, results = dry_run
    assert len(results) == 3
    for grid in grids:
        for label, task, seed in grid.grid():
            metrics = results[grid.out][label][task][seed]
            assert 0.0 <= entry(metrics["eval"], headline(metrics))["acc"] <= 1.0
            saved = RunFolder(grid.finished_dir(label, task, seed)).read_config()
            assert saved.scoring == "letter" and saved.max_length == 300
            if not saved.from_run:
                assert saved.train.steps == 2
        assert (Path(grid.out) / "summary.md").is_file()


def test_the_obqa_cells_are_evaluated_on_the_shifted_tasks(dry_run):
    grids, results = dry_run
    grid = grids[0]
    metrics = results[grid.out]["scalabl-paper"]["obqa"][0]
    assert {"arc_c", "arc_e", "mmlu_chemistry", "mmlu_physics"} <= set(metrics["ood"])
