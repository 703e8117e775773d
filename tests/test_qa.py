"""Open QA data: the offline tasks, a user's JSONL with line-numbered errors, disjoint deterministic
splits, and SQuAD-normalised exact match and token F1 against hand computations."""

from __future__ import annotations

import json

import pytest

from scalabl.qa import (
    QA_JSONL_PREFIX,
    exact_match,
    load_qa_jsonl,
    load_qa_splits,
    normalize_answer,
    token_f1,
)


def test_normalisation_is_squads():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear; the end.") == "apple pear end"
    assert normalize_answer("Théâtre") == "théâtre"  # letters kept, only ASCII punctuation removed


def test_exact_match_and_f1_by_hand():
    assert exact_match("the Sunset Blvd.", ["Sunset Blvd", "West Sunset Boulevard"])
    assert not exact_match("Sunset", ["Sunset Blvd"])
    # prediction "sunset boulevard west" vs reference "west sunset boulevard": same tokens -> 1
    assert token_f1("Sunset Boulevard West", ["West Sunset Boulevard"]) == 1.0
    # "barack obama" vs "obama": precision 1/2, recall 1 -> F1 2/3; the best reference counts
    assert token_f1("Barack Obama", ["Obama", "Michelle"]) == pytest.approx(2 / 3)
    assert token_f1("nothing shared", ["answer"]) == 0.0
    assert token_f1("the", ["a"]) == 1.0  # both normalise to empty


@pytest.mark.parametrize(("task", "size"), [("triviaqa", 7993), ("nq_open", 1000), ("sciq", 1000)])
def test_offline_tasks_load_with_references(task, size):
    splits = load_qa_splits(task)
    everything = splits.train + splits.validation + splits.test
    assert len(everything) == size
    assert len({e.id for e in everything}) == size  # disjoint
    assert len(splits.test) == round(0.3 * size) and len(splits.validation) == round(0.1 * size)
    assert all(e.answers and e.question for e in everything)
    assert load_qa_splits(task).test == splits.test  # deterministic
    assert load_qa_splits(task, seed=1).test != splits.test
    if task == "sciq":
        assert sum(e.context is not None for e in everything) > size // 2  # the support paragraphs
    if task == "triviaqa":
        assert max(len(e.answers) for e in everything) > 3  # the aliases


def test_a_users_file_and_its_errors(tmp_path):
    good = tmp_path / "qa.jsonl"
    rows = [
        {"question": "Capital of France?", "answers": ["Paris"]},
        {"id": "q2", "question": "2+2?", "answers": ["4", "four"], "context": "Arithmetic."},
    ]
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    examples = load_qa_jsonl(good)
    assert [e.id for e in examples] == ["line-1", "q2"] and examples[1].answers == ("4", "four")
    splits = load_qa_splits(QA_JSONL_PREFIX + str(good), n_test=1, n_validation=0)
    assert len(splits.test) == 1 and len(splits.train) == 1
    for line, message in [
        ("{bad", "not valid JSON"),
        (json.dumps({"question": "x"}), "missing field 'answers'"),
        (json.dumps({"question": "x", "answers": []}), "'answers' must be a non-empty list"),
        (json.dumps({"question": "x", "answers": ["a"], "extra": 1}), "unknown field 'extra'"),
        (json.dumps({"id": "q2", "question": "x", "answers": ["a"]}), "duplicate id 'q2' (first on line 2)"),
    ]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n" + line + "\n")
        with pytest.raises(
            ValueError, match=rf"{bad}:3: .*{message}".replace("(", r"\(").replace(")", r"\)")
        ):
            load_qa_jsonl(bad)
    with pytest.raises(ValueError, match="must be >= 0 and fit"):
        load_qa_splits(QA_JSONL_PREFIX + str(good), n_test=2, n_validation=1)
    with pytest.raises(ValueError, match="unknown open QA task"):
        load_qa_splits("no_such_qa")
