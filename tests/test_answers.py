"""scalabl predict: answers for new questions, streamed, resumable, never half-written, equal to the
in-process prediction whatever the batch size, with the run's decisions when it has them."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from conftest import trained_tiny_run

from scalabl.answers import Answerer, write_answers
from scalabl.cli import main
from scalabl.config import MethodConfig
from scalabl.runs import load_run

QUESTIONS = [
    {"id": "a", "question": "Which is warm?", "choices": ["sun", "snow"], "answer": 0},
    {"id": "b", "question": "What do plants need?", "choices": ["water", "rocks", "glass"]},
    {"question": "Pick one.", "choices": ["a", "bb", "ccc", "dd"], "answer": "ccc"},
    {"id": "d", "context": "Ice is cold.", "question": "Is ice cold?", "choices": ["yes", "no"]},
    {"id": "e", "question": "Two plus two?", "choices": ["3", "4", "5"], "answer": 1},
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    _, out = trained_tiny_run(
        tmp_path_factory,
        MethodConfig(method="scalabl", rank=2, sigma_init=0.5),
        max_test=8,
        n_validation=30,
        n_samples=(3,),
    )
    questions = out.parent / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return out, questions


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_answer_line_per_question(run, tmp_path):
    out, questions = run
    answers = tmp_path / "answers.jsonl"
    assert main(["predict", str(out), "--input", str(questions), "--output", str(answers), "--quiet"]) == 0
    lines = read(answers)
    assert [r["id"] for r in lines] == ["a", "b", "line-3", "d", "e"]
    for q, r in zip(QUESTIONS, lines, strict=True):
        assert len(r["probs"]) == len(q["choices"]) and math.isclose(sum(r["probs"]), 1.0, abs_tol=1e-9)
        assert r["choice"] == max(range(len(r["probs"])), key=r["probs"].__getitem__)
        assert r["choice_text"] == q["choices"][r["choice"]] and r["confidence"] == max(r["probs"])
        assert 0.0 <= r["mutual_information"] <= r["entropy"] <= math.log(len(q["choices"])) + 1e-9
        assert r["n_samples"] == 3 and "decision" not in r
        assert ("answer" in r) == ("answer" in q) and ("correct" in r) == ("answer" in q)
    assert lines[2]["answer"] == 2 and lines[2]["correct"] == (lines[2]["choice"] == 2)
    assert not list(tmp_path.glob("*.partial*"))

    # the same probabilities as the in-process model average, whatever the batch size
    config, blora = load_run(out)
    again = tmp_path / "again.jsonl"
    assert (
        main(
            [
                "predict",
                str(out),
                "--input",
                str(questions),
                "--output",
                str(again),
                "--batch-size",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    for a, b in zip(lines, read(again), strict=True):
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-6)
    # a finished output is not replaced unless asked
    assert main(["predict", str(out), "--input", str(questions), "--output", str(answers), "--quiet"]) == 2


def test_an_interrupted_run_resumes_after_its_last_complete_line(run, tmp_path):
    out, questions = run
    from scalabl.data import load_jsonl

    examples = load_jsonl(questions, require_answer=False)
    config, blora = load_run(out)
    predict = replace(config.predict_config(3), per_question=True, batch_size=2)
    provenance = {"run": str(out), "input": "digest", "n_samples": 3, "seed": 0}

    class Interrupted(Answerer):
        def answer(self, batch):
            if batch[0].id == "line-3":  # the second batch
                raise KeyboardInterrupt
            return super().answer(batch)

    target = tmp_path / "answers.jsonl"
    with pytest.raises(KeyboardInterrupt):
        write_answers(Interrupted(blora, predict), examples, target, provenance=provenance, progress=False)
    partial = tmp_path / "answers.jsonl.partial"
    assert not target.exists() and len(read(partial)) == 2
    with partial.open("a") as f:
        f.write('{"id": "line-3", "pro')  # a line torn by the interruption
    with pytest.raises(ValueError, match="seed differ"):
        write_answers(
            Answerer(blora, predict), examples, target, provenance={**provenance, "seed": 1}, progress=False
        )
    answered = write_answers(
        Answerer(blora, predict), examples, target, provenance=provenance, progress=False
    )
    assert answered == 3 and not partial.exists()
    whole = tmp_path / "whole.jsonl"
    write_answers(Answerer(blora, predict), examples, whole, provenance=provenance, progress=False)
    for a, b in zip(read(target), read(whole), strict=True):
        assert a["id"] == b["id"] and a["probs"] == pytest.approx(b["probs"], abs=1e-9)


def test_bad_rows_are_named_by_file_and_line(run, tmp_path, capsys):
    out, _ = run
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(QUESTIONS[0]) + "\n" + json.dumps({"question": "One?", "choices": ["x"]}) + "\n"
    )
    assert main(["predict", str(out), "--input", str(bad), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert f"{bad}:2: field 'choices' has 1 choice(s)" in capsys.readouterr().err


def test_answers_carry_the_runs_decisions(run, tmp_path):
    out, questions = run
    assert main(["calibrate-decisions", str(out), "--alpha", "0.2", "--quiet"]) == 0
    answers = tmp_path / "answers.jsonl"
    assert main(["predict", str(out), "--input", str(questions), "--output", str(answers), "--quiet"]) == 0
    for q, r in zip(QUESTIONS, read(answers), strict=True):
        decision = r["decision"]
        assert set(decision) == {"set_lac", "set_aps", "answer"}
        assert all(0 <= i < len(q["choices"]) for i in decision["set_lac"] + decision["set_aps"])
        assert isinstance(decision["answer"], bool)
        probs = torch.tensor(r["probs"])
        saved = json.loads((out / "decisions.json").read_text())
        assert decision["answer"] == (probs.max().item() >= saved["selective"]["threshold"])
