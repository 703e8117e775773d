"""Example: a question is refused when it cannot be scored (no id, no question, < 2 choices, bad label)."""

from __future__ import annotations

import pytest

from scalabl.examples import Example, Splits


def test_example_validation():
    ok = {"id": "x", "question": "q?", "choices": ("a", "b"), "label": 1}
    Example(**ok)
    for field, bad in [("id", ""), ("question", ""), ("choices", ("a",)), ("label", 2), ("label", -1)]:
        with pytest.raises(ValueError, match=field):
            Example(**{**ok, field: bad})


def test_splits_summary():
    ex = Example(id="a", question="q?", choices=("x", "y"), label=0)
    assert Splits(train=[ex, ex], validation=[ex], test=[]).summary() == {
        "train": 2,
        "validation": 1,
        "test": 0,
    }
