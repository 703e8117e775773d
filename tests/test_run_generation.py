"""Runs on open questions: a tiny model trained on a user's QA file writes its generations, their
grading and the scores' AUROC and PRR; ``scalabl generate`` answers new questions, resumes an
interrupted output, and refuses a multiple-choice run; ``scalabl evaluate`` regenerates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import trained_tiny_run

from scalabl.cli import main
from scalabl.config import MethodConfig
from scalabl.config.generate import GenerateConfig
from scalabl.qa import QA_JSONL_PREFIX
from scalabl.run_folder import GENERATIONS_FILE, REJECTION_PLOT, RunFolder
from scalabl.run_generation import read_generations, score_quality, write_generations
from scalabl.runs import load_run


def _qa_file(path: Path, n: int = 20, *, references: bool = True) -> Path:
    rows = []
    for k in range(n):
        a, b = k % 5, (3 * k) % 4
        row = {"id": f"s{k}", "question": f"{a}+{b}=?"}
        if references:
            row["answers"] = [str(a + b)]
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
    data = _qa_file(tmp_path_factory.mktemp("qa") / "sums.jsonl")
    return trained_tiny_run(
        tmp_path_factory,
        MethodConfig(method="scalabl", rank=2),
        task=QA_JSONL_PREFIX + str(data),
        generate=GenerateConfig(n_samples=2, max_new_tokens=3, batch_size=4),
    )


def test_a_run_on_open_questions_writes_its_generations_and_their_scores(qa_run):
    config, out = qa_run
    records = read_generations(out)
    assert len(records) == len(config.splits().test) == 6  # 30% of the 20 questions
    for r in records:
        assert r["answer"] == r["texts"][0] and len(r["samples"]) == 2
        assert r["correct"] in (True, False) and 0.0 <= r["f1"] <= 1.0
        assert {"msp", "msp_single", "semantic_entropy", "mutual_information"} <= set(r["scores"])
    g = RunFolder(out).read_metrics()["generation"]
    assert g["n"] == 6 and g["answers_per_question"] == 2
    assert g["accuracy"] == pytest.approx(np.mean([r["correct"] for r in records]))
    assert g["timing"]["cost_vs_one_answer"] > 1.0
    report = (out / "report.md").read_text()
    assert (
        (out / REJECTION_PLOT).is_file() and "(open answers)" in report and "| msp: AUROC / PRR |" in report
    )


def test_score_quality_by_hand():
    # four answers, two wrong; u ranks the wrong ones 1st and 3rd most uncertain
    records = [
        {"correct": False, "scores": {"msp": 4.0}},
        {"correct": True, "scores": {"msp": 3.0}},
        {"correct": False, "scores": {"msp": 2.0}},
        {"correct": True, "scores": {"msp": 1.0}},
    ]
    quality = score_quality(records)["msp"]
    # AUROC: wrong-right pairs with the wrong one more uncertain: (4>3, 4>1, 2>1) of 4 -> 3/4
    assert quality["auroc"] == pytest.approx(0.75)
    # rejection curve (accuracy of the kept, rejecting the most uncertain first): keep 4 -> .5,
    # 3 -> 2/3, 2 -> 1/2, 1 -> 1; the oracle rejects a wrong one first: .5, 2/3, 1, 1; random .5
    area, oracle = (0.5 + 2 / 3 + 0.5 + 1.0) / 4, (0.5 + 2 / 3 + 1.0 + 1.0) / 4
    assert quality["prr"] == pytest.approx((area - 0.5) / (oracle - 0.5))  # 4/7


def test_generate_answers_new_questions_and_resumes(qa_run, tmp_path):
    _, out = qa_run
    questions = _qa_file(tmp_path / "q.jsonl", n=5, references=False)
    answers = tmp_path / "a.jsonl"
    assert main(["generate", str(out), "--input", str(questions), "--output", str(answers), "--quiet"]) == 0
    lines = [json.loads(x) for x in answers.read_text().splitlines()]
    assert [r["id"] for r in lines] == [f"s{k}" for k in range(5)]
    assert all("correct" not in r and len(r["samples"]) == 2 and "msp" in r["scores"] for r in lines)
    # an interrupted output: two whole lines and a torn one; the resumed output is the same
    _, blora = load_run(out)
    config = GenerateConfig(n_samples=2, max_new_tokens=3, batch_size=2)
    from scalabl.qa import load_qa_jsonl

    examples = load_qa_jsonl(questions, require_answers=False)
    whole = tmp_path / "whole.jsonl"
    write_generations(blora, examples, config, whole, provenance={"p": 1}, progress=False)
    resumed = tmp_path / "resumed.jsonl"
    first = whole.read_text().splitlines(keepends=True)
    (tmp_path / "resumed.jsonl.partial").write_text("".join(first[:2]) + first[2][:10])
    (tmp_path / "resumed.jsonl.partial.json").write_text(json.dumps({"p": 1}))
    assert write_generations(blora, examples, config, resumed, provenance={"p": 1}, progress=False) == 3
    assert resumed.read_text() == whole.read_text()


def test_generate_refuses_bad_rows_and_multiple_choice_runs(qa_run, tmp_path, tmp_path_factory, capsys):
    _, out = qa_run
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "1+1=?"}) + "\n" + json.dumps({"question": ""}) + "\n")
    assert main(["generate", str(out), "--input", str(bad), "--output", str(tmp_path / "x.jsonl")]) == 2
    assert f"{bad}:2: field 'question'" in capsys.readouterr().err
    _, mc = trained_tiny_run(tmp_path_factory, MethodConfig(method="mle", rank=2))
    good = _qa_file(tmp_path / "q.jsonl", n=2)
    assert main(["generate", str(mc), "--input", str(good), "--output", str(tmp_path / "y.jsonl")]) == 2
    assert "multiple-choice task 'arc_easy'" in capsys.readouterr().err


def test_evaluate_regenerates_with_other_generation_settings(qa_run):
    _, out = qa_run
    assert main(["evaluate", str(out), "--gen-samples", "3", "--quiet"]) == 0
    assert RunFolder(out).read_metrics()["generation"]["answers_per_question"] == 3
    assert all(len(r["samples"]) == 3 for r in read_generations(out))
    assert (out / GENERATIONS_FILE).is_file()
