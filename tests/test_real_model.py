"""Real-model checks on the embedded SmolLM2-135M-Instruct (marked slow: run with ``-m slow``)."""

from __future__ import annotations

import json

import pytest

from scalabl.cli import main


@pytest.mark.slow
def test_quick_demo_runs_end_to_end_on_the_embedded_model(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| mle | 0 |" in printed and "| scalabl | 0 |" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scalabl"]["extra_parameters"] == 2 * 8 * 2 * 30  # 2r per module, q/v in 30 layers
    for name in ("mle", "scalabl"):
        for result in summary[name]["eval"].values():
            assert 0.0 <= result["acc"] <= 1.0
            assert 0.0 <= result["ece"] <= 1.0
            assert result["nll"] > 0.0
        history = [json.loads(line) for line in (out / name / "history.jsonl").read_text().splitlines()]
        assert all(h["nll"] == h["nll"] for h in history)  # finite, logged
    assert (out / "report.md").is_file() and (out / "reliability.png").is_file()
