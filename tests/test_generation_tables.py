"""A bench grid on an open QA task: its cells are tabulated by their answers' scores (mean ± std over
seeds, against a hand computation), with the seed-pooled rejection curves, and archived with their
generations."""

from __future__ import annotations

import json

import pytest

from scalabl.bench import BenchConfig, archive_cells, run_bench
from scalabl.generation_tables import generation_summary
from scalabl.qa import QA_JSONL_PREFIX
from scalabl.run_folder import GENERATIONS_FILE
from scalabl.testing import save_tiny_model


def _metrics(acc: float, auroc: float) -> dict:
    scores = {"msp": {"auroc": auroc, "prr": 0.1}, "msp_single": {"auroc": 0.5, "prr": 0.0}}
    return {
        "generation": {
            "accuracy": acc,
            "f1": acc,
            "answers_per_question": 5,
            "timing": {"cost_vs_one_answer": 6.0},
            "scores": scores,
        }
    }


def test_the_summary_is_mean_and_sample_std_over_seeds():
    lines = generation_summary({"scalabl": {0: _metrics(0.4, 0.6), 1: _metrics(0.5, 0.8)}, "mle": {}}, "sciq")
    table = "\n".join(lines)
    assert "scalabl (n=2)" in table and "mle" not in table  # a method without cells has no column
    assert "| accuracy (EM, %) | 45.0 ± 7.1 |" in table  # std of (40, 50) with n - 1: 7.07
    assert "| msp: AUROC | 0.700 ± 0.141 |" in table
    assert "| msp_single: PRR | 0.000 ± 0.000 |" in table


def test_a_grid_on_open_questions_tabulates_and_archives_its_answers(tmp_path):
    data = tmp_path / "sums.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"{k % 5}+1=?", "answers": [str(k % 5 + 1)]}) + "\n" for k in range(20)
        )
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        model = save_tiny_model(tmp_path / "tiny")
    task = QA_JSONL_PREFIX + str(data)
    config = BenchConfig(
        tasks=[task],
        methods={"scalabl": {"method": {"method": "scalabl", "rank": 2}}},
        seeds=[0],
        base={
            "model": str(model),
            "max_train": 4,
            "train": {"steps": 1, "batch_size": 2, "val_size": 0, "checkpoint_every": 0},
            "generate": {"n_samples": 2, "max_new_tokens": 2},
        },
        out=str(tmp_path / "runs"),
        archive=str(tmp_path / "archive"),
    )
    results = run_bench(config, progress=False)
    assert results["scalabl"][task][0]["generation"]["n"] == 6
    summary = (tmp_path / "runs" / "summary.md").read_text()
    assert "## Open answers" in summary and "| accuracy (EM, %) |" in summary
    assert list((tmp_path / "runs").glob("rejection_*.png"))
    assert json.loads((tmp_path / "runs" / "results.json").read_text())["scalabl"][task]["0"]["generation"]
    assert archive_cells(config) == 1
    kept = next((tmp_path / "archive").rglob(GENERATIONS_FILE))
    assert len(kept.read_text().splitlines()) == 6
