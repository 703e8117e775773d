"""``scalabl bench --backend ray`` on a local Ray started in this process: the same cells and tables,
byte for byte, as the local backend; a failing cell is retried, then reported, and the rest finish."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from conftest import save_tiny_model, tiny_bench  # noqa: E402

from scalabl.bench import BenchConfig  # noqa: E402
from scalabl.cli import main  # noqa: E402
from scalabl.config.backend import BackendConfig  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _grid(root: Path, name: str, model: Path, methods: dict, seeds: tuple[int, ...] = (0, 1)) -> Path:
    config = tiny_bench(root / name, model, methods, seeds=seeds)
    path = root / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


ROOT = Path(__file__).resolve().parents[1]  # where pytest, hence Ray's workers, started
METHODS = {"mle": {}, "temperature": {"from": "mle"}}  # a trained cell and a post-hoc one on its adapter


def _tables(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.suffix in (".md", ".csv", ".tex") and "cells" not in p.parts
    }


def test_ray_backend_gives_the_local_backends_tables_byte_for_byte(local_ray, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = save_tiny_model(tmp_path / "tiny")
    configs = {}
    for backend in ("local", "ray"):  # the same relative out folder: post-hoc cells hash their source's path
        (tmp_path / backend).mkdir()
        monkeypatch.chdir(tmp_path / backend)
        path = _grid(Path("."), "out", model, METHODS, seeds=(0,))
        assert main(["bench", str(path), "--quiet", "--backend", backend]) == 0
        configs[backend] = BenchConfig.from_file(path)
    local, distributed = configs["local"], configs["ray"]
    assert all(distributed.finished_dir(*cell) is not None for cell in distributed.grid())
    assert [local.cell_dir(*c) for c in local.grid()] == [
        distributed.cell_dir(*c) for c in distributed.grid()
    ]
    assert not (ROOT / "out").exists()  # the workers wrote where the driver stood, not where Ray started
    tables = _tables(tmp_path / "local" / "out")
    assert "summary.md" in tables and any(k.startswith("tables/") for k in tables)
    assert _tables(tmp_path / "ray" / "out") == tables
    # a second run finds everything done and submits nothing
    assert main(["bench", str(path), "--quiet", "--backend", "ray"]) == 0


def test_a_failing_cell_is_retried_then_reported_and_the_others_finish(
    local_ray, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = save_tiny_model(tmp_path / "tiny")
    damaged = shutil.copytree(
        model, tmp_path / "damaged"
    )  # its config reads (the cell hashes), its weights do not
    (damaged / "model.safetensors").write_bytes(b"not a safetensors file")
    broken = {"mle": {}, "map": {"run": {"model": str(damaged)}}}
    path = _grid(tmp_path, "broken", model, broken, seeds=(0,))
    assert main(["bench", str(path), "--quiet", "--backend", "ray", "--retries", "1"]) == 1
    out, err = capsys.readouterr()
    assert "retrying map arc_easy seed 0" in out
    assert "failed: map arc_easy seed 0: failed 2 times; last error:" in err
    config = BenchConfig.from_file(path)
    assert [c for c in config.grid() if config.finished_dir(*c) is not None] == [("mle", "arc_easy", 0)]


def test_backend_options_are_checked(tmp_path, capsys):
    with pytest.raises(ValueError, match="backend: 'slurm' not in"):
        BackendConfig(backend="slurm")
    with pytest.raises(ValueError, match="only with backend 'ray'"):
        BackendConfig(ray_address="auto")
    path = _grid(tmp_path, "g", tmp_path, METHODS)
    assert main(["bench", str(path), "--backend", "ray", "--share"]) == 2
    assert "--share and --shard are for --backend local" in capsys.readouterr().err
