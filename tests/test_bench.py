"""scalabl bench: the grid, config hashes that skip finished cells, tables mean +- std, three formats."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
from conftest import save_tiny_model, tiny_bench

from scalabl.bench import BenchConfig, collect, merged, run_bench, write_tables
from scalabl.cell_hash import cell_digest
from scalabl.cli import main
from scalabl.config import RunConfig
from scalabl.tables import table_rows, to_csv, to_latex, to_markdown

# the folder of that cell as computed before quant, device, gradient_checkpointing and
# sample_modules were run options (commit 7cb702d)
PINNED_HASH = "seed0-a6763fd8be"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    model_dir = save_tiny_model(root / "tiny")
    methods = {"mle": {}, "scalabl": {"train": {"variational_lr": 0.02}}, "temperature": {"from": "mle"}}
    config = tiny_bench(root / "out", model_dir, methods, tasks=["arc_easy", "obqa"], ood={"obqa": ["arc_c"]})
    path = root / "bench.json"
    path.write_text(json.dumps(config))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        assert main(["bench", str(path), "--quiet"]) == 0
    return path, BenchConfig.from_file(path)


def test_every_cell_ran_and_post_hoc_cells_start_from_their_source(bench):
    _, config = bench
    results = collect(config)
    assert {(lab, t, s) for lab in results for t in results[lab] for s in results[lab][t]} == set(
        config.grid()
    )
    m = results["temperature"]["obqa"][1]
    assert m["from_run"] == str(config.cell_dir("mle", "obqa", 1)) and m["train_steps"] == 0
    assert set(results["scalabl"]["obqa"][0]["ood"]) == {"arc_c"}
    assert results["mle"]["arc_easy"][0]["ood"] == {}


def test_finished_cells_are_skipped_and_changed_configs_rerun(bench, capsys):
    path, config = bench
    stamp = {c: (config.cell_dir(*c) / "metrics.json").stat().st_mtime_ns for c in config.grid()}
    assert main(["bench", str(path), "--quiet"]) == 0
    assert all((config.cell_dir(*c) / "metrics.json").stat().st_mtime_ns == t for c, t in stamp.items())
    raw = json.loads(path.read_text())
    raw["seeds"] = [0, 1, 2]
    changed = BenchConfig(**raw)
    assert changed.cell_dir("mle", "obqa", 0) == config.cell_dir("mle", "obqa", 0)  # same cell, same hash
    raw["base"]["train"]["steps"] = 3
    assert BenchConfig(**raw).cell_dir("mle", "obqa", 0) != config.cell_dir("mle", "obqa", 0)


def test_tables_are_mean_and_sample_std_over_seeds(bench):
    _, config = bench
    results = collect(config)
    columns, rows = table_rows(config, results, "ece")
    assert columns == ["arc_easy", "obqa", "obqa→arc_c"]
    scal = next(r for r in rows if r[0] == "scalabl")
    values = [100 * results["scalabl"]["obqa"][s]["eval"]["S=2"]["ece"] for s in (0, 1)]
    mean = sum(values) / 2
    std = math.sqrt(sum((v - mean) ** 2 for v in values))  # n - 1 = 1
    assert scal[2][0] == pytest.approx(mean) and scal[2][1] == pytest.approx(std) and scal[2][2] == 2
    md, csv_text, tex = (
        to_markdown("ece", columns, rows),
        to_csv("ece", columns, rows),
        to_latex("ece", columns, rows),
    )
    assert "| scalabl |" in md and " ± " in md
    assert csv_text.splitlines()[0].startswith("method,arc_easy mean,arc_easy std")
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and r"obqa$\to$arc\_c" in tex
    out = config.out
    for metric in ("acc", "ece", "nll", "brier", "aurc", "acc_cov80", "auroc_entropy"):
        for ext in ("md", "csv", "tex"):
            assert (Path(out) / "tables" / f"{metric}.{ext}").is_file()
    assert (Path(out) / "reliability_obqa.png").is_file() and (Path(out) / "selective_obqa.png").is_file()
    _, cov_rows = table_rows(config, results, "acc_cov50")
    mle = next(r for r in cov_rows if r[0] == "mle")
    assert mle[1][0] == pytest.approx(
        sum(results["mle"]["arc_easy"][s]["eval"]["S=0"]["acc_cov50"] for s in (0, 1)) / 2
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tasks": []}, "tasks"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"methods": {"temperature": {"from": "mle"}}}, "from"),
        ({"methods": {"mle": {"optimizer": {}}}}, "unknown key 'optimizer'"),
        ({"ood": {"boolq": ["arc_c"]}}, "ood"),
        ({"methods": {"nope": {}}}, "method"),
    ],
)
def test_bad_bench_configs_name_the_field(change, message):
    raw = {"tasks": ["arc_easy"], "methods": {"mle": {}}, **change}
    with pytest.raises(ValueError, match=message):
        BenchConfig(**raw)


def test_tables_only_runs_nothing_and_tabulates_partial_grids(bench, tmp_path):
    path, config = bench
    raw = json.loads(path.read_text())
    raw["seeds"] = [0, 1, 2]  # seed 2 was never run
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(raw))
    assert main(["bench", str(partial), "--tables-only"]) == 0
    assert not BenchConfig(**raw).cell_dir("mle", "obqa", 2).exists()
    assert "| mle |" in (Path(config.out) / "tables" / "acc.md").read_text()


def test_archive_lets_a_fresh_checkout_continue_the_grid(bench, tmp_path):
    """Archived cells (no weights) count as done; a new post-hoc method re-runs its source for the
    adapter, which reproduces the archived source's metrics."""
    path, config = bench
    raw = json.loads(path.read_text())
    raw["archive"] = str(tmp_path / "archive")
    first = tmp_path / "first.json"
    first.write_text(json.dumps(raw))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        assert main(["bench", str(first), "--tables-only", "--archive"]) == 0
    kept = list((tmp_path / "archive" / "cells").rglob("metrics.json"))
    assert len(kept) == len(config.grid())
    assert not list((tmp_path / "archive").rglob("adapter.safetensors"))
    out = Path(config.out)
    for name in (
        "summary.md",
        "results.json",
        "tables/ece.csv",
        "tables/ece_vs_mle.md",
        "selective_obqa.png",
    ):
        assert (tmp_path / "archive" / name).read_bytes() == (out / name).read_bytes()  # tables beside cells

    # A fresh checkout: the same config (same out folder, hence the same cell hashes), no runs.
    out = Path(config.out)
    moved = out.rename(tmp_path / "old-machine")
    try:
        raw["tasks"], raw["seeds"], raw["ood"] = ["arc_easy"], [0], {}
        raw["methods"]["temperature_again"] = {"method": {"method": "temperature"}, "from": "mle"}
        second = tmp_path / "second.json"
        second.write_text(json.dumps(raw))
        fresh = BenchConfig.from_file(second)
        assert fresh.finished_dir("scalabl", "arc_easy", 0) is not None  # found in the archive
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HF_HUB_OFFLINE", "1")
            assert main(["bench", str(second), "--quiet"]) == 0
        ran = {p.parent.parent.parent.name for p in (out / "cells").rglob("metrics.json")}
        assert ran == {"mle", "temperature_again"}  # the source re-run for its weights, and the new cell
        again = json.loads((fresh.cell_dir("mle", "arc_easy", 0) / "metrics.json").read_text())
        archived = json.loads((fresh.finished_dir("temperature", "arc_easy", 0) / "metrics.json").read_text())
        kept_mle = json.loads(
            (
                Path(raw["archive"]) / fresh.cell_dir("mle", "arc_easy", 0).relative_to(out) / "metrics.json"
            ).read_text()
        )
        for key in ("acc", "ece", "nll", "brier"):  # deterministic: the same adapter
            assert again["eval"]["S=0"][key] == pytest.approx(kept_mle["eval"]["S=0"][key], rel=1e-9)
        assert archived["method"] == "temperature"
        assert set(collect(fresh)) == set(raw["methods"])
    finally:
        if out.exists():
            import shutil

            shutil.rmtree(out)
        moved.rename(out)


# the config of the pinned cell: computed before most options existed, with summed scores
PINNED_BASE = {
    "max_test": 100,
    "max_validation": 50,
    "n_samples": [4],
    "train": {"steps": 40},
    "length_norm": "none",
}


def pinned_cell_name(tmp_path, **changes) -> str:
    """The folder name of the pinned cell's config with ``changes`` merged into its base."""
    config = BenchConfig(tasks=["arc_easy"], methods={"mle": {}}, seeds=[0], out=str(tmp_path),
                         base=merged(PINNED_BASE, changes))  # fmt: skip
    return config.cell_dir("mle", "arc_easy", 0).name


def test_cell_hashes_survive_new_run_options_at_their_defaults(tmp_path):
    """Cells computed before an option existed keep their folder (pinned hash of a fixed config)."""
    assert pinned_cell_name(tmp_path) == PINNED_HASH


def test_shards_split_the_grid_and_keep_post_hoc_cells_with_their_source():
    config = BenchConfig(
        tasks=["arc_easy", "obqa"],
        seeds=[0, 1],
        methods={"mle": {}, "scalabl": {}, "temperature": {"from": "mle"}, "tfb": {"from": "temperature"}},
    )
    shards = [config.shard_cells(i, 3) for i in range(3)]
    flat = [c for s in shards for c in s]
    assert sorted(flat) == sorted(config.grid())  # every cell once
    assert max(map(len, shards)) - min(map(len, shards)) <= 3  # dealt out evenly (groups of 1 or 3)
    for cells in shards:
        for label, task, seed in cells:
            if label in ("temperature", "tfb"):
                assert ("mle", task, seed) in cells
    assert config.root("tfb") == "mle" and config.root("scalabl") == "scalabl"
    with pytest.raises(ValueError, match="shard"):
        config.shard_cells(3, 3)


@pytest.mark.parametrize("bad", ["2/2", "1", "a/2", "-1/2"])
def test_shard_option_names_the_expected_form(bad, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["bench", str(tmp_path / "b.json"), "--shard", bad])
    assert "I/N" in capsys.readouterr().err


def _one_seed_grid(bench, tmp_path) -> tuple[Path, BenchConfig]:
    """The fixture's grid cut to ARC-Easy, seed 0, no OOD, in a fresh out folder: its file and config."""
    raw = json.loads(bench[0].read_text())
    raw["out"] = str(tmp_path / "out")
    raw["seeds"] = [0]
    raw["tasks"], raw["ood"] = ["arc_easy"], {}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(raw))
    return path, BenchConfig.from_file(path)


def test_a_shard_runs_only_its_cells(bench, tmp_path):
    shard_path, sharded = _one_seed_grid(bench, tmp_path)
    assert main(["bench", str(shard_path), "--quiet", "--shard", "1/2"]) == 0
    ran = {c for c in sharded.grid() if sharded.finished_dir(*c) is not None}
    assert ran == set(sharded.shard_cells(1, 2)) == {("scalabl", "arc_easy", 0)}


def test_shared_processes_skip_groups_claimed_by_a_live_process(bench, tmp_path):
    shared_path, shared = _one_seed_grid(bench, tmp_path)
    assert [key for key, _ in shared.groups()] == [("mle", "arc_easy", 0), ("scalabl", "arc_easy", 0)]
    busy = shared.claim_path(("mle", "arc_easy", 0))
    busy.parent.mkdir(parents=True)
    busy.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))  # alive: this process
    assert main(["bench", str(shared_path), "--quiet", "--share"]) == 0
    ran = {c for c in shared.grid() if shared.finished_dir(*c) is not None}
    assert ran == {("scalabl", "arc_easy", 0)}  # the claimed group (mle and its temperature) was left alone
    assert busy.exists() and not shared.claim_path(("scalabl", "arc_easy", 0)).exists()  # own claim released
    busy.unlink()  # its owner finished or died: the next shared process takes the group
    assert main(["bench", str(shared_path), "--quiet", "--share"]) == 0
    assert all(shared.finished_dir(*c) is not None for c in shared.grid())
    with pytest.raises(ValueError, match="not both"):
        run_bench(shared, progress=False, shard=(0, 2), share=True)


def test_summary_has_the_paired_tables(bench):
    _, config = bench
    summary = (Path(config.out) / "summary.md").read_text()
    assert "## Against mle, paired by seed" in summary and "### ECE (%)" in summary
    assert (Path(config.out) / "tables" / "ece_vs_mle.md").is_file()


ROOT = Path(__file__).resolve().parents[1]
ARCHIVED = sorted((ROOT / "benchmarks" / "results").glob("**/cells/*/*/seed*-*/config.json"))


def test_every_archived_cell_keeps_its_hash():
    """The folder of every committed cell is the hash of its own config.json: nothing is orphaned."""
    assert len(ARCHIVED) >= 300
    for path in ARCHIVED:
        raw = json.loads(path.read_text())
        raw.pop("scalabl_version", None)
        assert path.parent.name.endswith("-" + cell_digest(RunConfig.from_dict(raw))), path


@pytest.mark.parametrize("grid", ["suite", "suite_length_norm"])
def test_tables_only_regenerates_the_committed_tables_byte_for_byte(grid, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs name their folders relative to the repository
    config = BenchConfig.from_file(ROOT / "benchmarks" / "suite" / f"{grid}.json")
    write_tables(config, collect(config), plots=False, into=tmp_path)
    committed = ROOT / "benchmarks" / "results" / grid
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert len(written) > 40
    for name in written:
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name


def test_a_new_section_field_at_its_default_keeps_the_hash(tmp_path):
    """train.adam_eps and max_length joined the run config after the cells: at their defaults they
    are left out of the hash, changed they move the cell."""

    def name(**changes) -> str:
        return pinned_cell_name(tmp_path, **changes)

    assert name(train={"adam_eps": 1e-8}) == name(max_length=None) == PINNED_HASH
    assert name(train={"adam_eps": 1e-6}) != PINNED_HASH and name(max_length=300) != PINNED_HASH
    # length_norm was a boolean: "none" and "tokens" hash as the False and True the cells were run with
    assert name(length_norm=False) == PINNED_HASH
    assert name(length_norm="tokens") == name(length_norm=True) != PINNED_HASH
    assert name(length_norm="chars") not in (PINNED_HASH, name(length_norm=True))


def test_default_targets_hash_as_the_targets_they_resolve_to(tmp_path):
    """target_modules left unset became the architecture's defaults: a cell of the embedded model keeps
    the folder it had when ("q_proj", "v_proj") was the default written into every config."""

    def name(method: dict) -> str:
        return pinned_cell_name(tmp_path, method=method)

    assert name({}) == name({"target_modules": ["q_proj", "v_proj"]}) == PINNED_HASH
    assert name({"target_modules": ["q_proj", "v_proj", "lm_head"]}) != PINNED_HASH


def test_models_give_one_grid_each_with_their_overrides_merged(tmp_path):
    config = BenchConfig(
        tasks=["arc_easy"],
        methods={"mle": {}, "scalabl": {"train": {"recipe": "blob", "kl_lr": 0.1}}},
        seeds=[0],
        out=str(tmp_path / "runs"),
        archive=str(tmp_path / "kept"),
        base={"train": {"steps": 3, "batch_size": 4}},
        models={
            "a": {"base": {"model": "a-model"}},
            "b": {
                "base": {"model": "b-model", "train": {"batch_size": 2}},
                "methods": {"scalabl": {"train": {"kl_lr": 0.2}}},
            },
        },  # fmt: skip
    )
    a, b = config.grids()
    assert (a.out, b.archive) == (str(tmp_path / "runs" / "a"), str(tmp_path / "kept" / "b"))
    run_a, run_b = a.run_config("scalabl", "arc_easy", 0), b.run_config("scalabl", "arc_easy", 0)
    assert (run_a.model, run_a.train.batch_size, run_a.train.kl_lr) == ("a-model", 4, 0.1)
    assert (run_b.model, run_b.train.batch_size, run_b.train.kl_lr, run_b.train.steps) == (
        "b-model",
        2,
        0.2,
        3,
    )
    assert run_b.train.recipe == "blob"  # merged key by key, not replaced
    assert [g.out for g in config.grids(["b"])] == [b.out]
    with pytest.raises(ValueError, match="'c' is not one of the bench's models"):
        config.grids(["c"])
    plain = BenchConfig(tasks=["arc_easy"], methods={"mle": {}}, out=str(tmp_path))
    assert plain.grids() == [plain]
    with pytest.raises(ValueError, match="lists no models"):
        plain.grids(["a"])


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ({"a": {"run": {}}}, "models.a: unknown key 'run'"),
        ({"a": {"methods": {"nope": {}}}}, "models.a.methods: 'nope' is not one of the methods"),
    ],
)
def test_bad_models_name_the_field(models, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        BenchConfig(tasks=["arc_easy"], methods={"mle": {}}, out=str(tmp_path), models=models)


def test_merged_merges_nested_dicts_and_replaces_the_rest():
    base = {"a": 1, "train": {"steps": 5, "lr": 0.1}, "n_samples": [4, 0]}
    out = merged(base, {"train": {"lr": 0.2}, "n_samples": [10]})
    assert out == {"a": 1, "train": {"steps": 5, "lr": 0.2}, "n_samples": [10]}
    assert base["train"]["lr"] == 0.1  # the input is left as it was


def test_a_method_can_run_on_some_tasks_only(tmp_path):
    raw = {
        "tasks": ["arc_easy", "obqa"],
        "seeds": [0],
        "base": {"model": str(save_tiny_model(tmp_path / "tiny"))},
        "methods": {"mle": {}, "map": {"tasks": ["obqa"]}, "temperature": {"from": "mle", "tasks": ["obqa"]}},
    }
    config = BenchConfig(**raw)
    assert config.grid() == [
        ("mle", "arc_easy", 0),
        ("mle", "obqa", 0),
        ("map", "obqa", 0),
        ("temperature", "obqa", 0),
    ]
    for methods, message in [
        ({"mle": {"tasks": ["boolq"]}}, r"methods.mle.tasks: name one or more of the tasks"),
        ({"mle": {"tasks": []}}, r"methods.mle.tasks: name one or more"),
        ({"mle": {"tasks": ["obqa"]}, "temperature": {"from": "mle"}}, r"among its source 'mle'"),
    ]:
        with pytest.raises(ValueError, match=message):
            BenchConfig(**{**raw, "methods": methods})


def test_methods_option_runs_only_those_groups(bench, tmp_path, capsys):
    path, config = _one_seed_grid(bench, tmp_path)
    assert main(["bench", str(path), "--quiet", "--methods", "mle"]) == 0
    ran = {c for c in config.grid() if config.finished_dir(*c) is not None}
    assert ran == {("mle", "arc_easy", 0), ("temperature", "arc_easy", 0)}  # the group: its post-hoc cell too
    with pytest.raises(ValueError, match=r"'temperature' is not a trained method of the grid"):
        run_bench(config, progress=False, methods=["temperature"])


def test_the_2025_peers_run_as_bench_cells(tmp_path, monkeypatch):
    """ivon and blora_xs in a grid (the regime suite has them), with a temperature on top of one."""
    model_dir = save_tiny_model(tmp_path / "tiny")
    methods = {
        "ivon": {"method": {"method": "ivon", "ivon_lr": 0.5}},
        "blora_xs": {},
        "blora_xs+T": {"from": "blora_xs", "method": {"method": "blora_xs", "temperature": True}},
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(tiny_bench(tmp_path / "out", model_dir, methods, seeds=(0,))))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["bench", str(path), "--quiet"]) == 0
    results = collect(BenchConfig.from_file(path))
    for label in methods:
        assert 0 <= results[label]["arc_easy"][0]["eval"]["S=2"]["acc"] <= 1
    assert (
        results["blora_xs"]["arc_easy"][0]["extra_parameters"] == (2 + 10) * 2 * 2 * 4
    )  # (2 + K) r^2, 4 modules
    assert results["blora_xs+T"]["arc_easy"][0]["train_steps"] == 0
