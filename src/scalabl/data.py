"""Examples, the deterministic split rule, and a user's own JSONL files.

The tasks (ARC, OBQA, BoolQ, WinoGrande, MMLU), their prompts and their sources (offline copies,
the Hugging Face hub) are in :mod:`scalabl.tasks`; docs/data.md has the pool and split sizes.

Split rule
----------
``split_examples(examples, seed=s, n_validation=v, n_test=t)`` sorts the pool by id, shuffles it
with ``random.Random(s).shuffle``, and takes the first ``t`` examples as **test**, the next ``v`` as
**validation** and the rest as **train**. The three parts are disjoint and depend only on the pool
and the seed. Offline pools use each task's default sizes (:attr:`scalabl.tasks.Task.n_test`);
``max_train`` (and a task's own training size, WinoGrande-S/M) keeps the first training examples
in shuffled order, which leaves validation and test unchanged. Hub tasks keep their official
splits (see :mod:`scalabl.tasks`).

Your own data: JSONL
--------------------
``task="jsonl:PATH"`` reads a JSONL file, one question per line::

    {"question": "2+2=?", "choices": ["3", "4", "5"], "answer": 1}
    {"id": "q2", "context": "A passage.", "question": "...", "choices": ["yes", "no"], "answer": "no"}

``answer`` is the 0-based index of the correct choice, or its exact text. ``id`` (default
``line-N``) and ``context`` (text shown before the question) are optional; no other field is
allowed. Blank lines are skipped. Every problem is reported with the file, the line and the field:
invalid JSON, a missing or unknown field, fewer than 2 choices, an answer out of range, a
duplicate id, an empty file. The split rule is the one above, with test = 20% and validation
= 10% of the pool by default (at least one example each when the pool has 3 or more).
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from scalabl.choices import Source
from scalabl.examples import Example, Splits
from scalabl.tasks import MMLU_PREFIX, TASK_NAMES, HubSplits, Task, get_task

JSONL_PREFIX = "jsonl:"
JSONL_FIELDS = ("id", "question", "choices", "answer", "context")
JSONL_REQUIRED = ("question", "choices", "answer")
TASK_HELP = f"{', '.join(TASK_NAMES)}, mmlu:SUBJECT[,...], or jsonl:PATH"


def check_task_name(task: str, field: str = "task") -> None:
    """A ValueError naming ``field`` unless ``task`` names a task, MMLU subjects or a JSONL file."""
    if task not in TASK_NAMES and not task.startswith((JSONL_PREFIX, MMLU_PREFIX)):
        raise ValueError(f"{field}: unknown task {task!r}; allowed: {TASK_HELP}")


def parse_question(row: object, where: str, default_id: str, require_answer: bool = True) -> Example:
    """One question of the JSONL schema (see the module docstring) from a decoded JSON value; every
    problem is a ValueError that starts with ``where`` and names the field."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - set(JSONL_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}; allowed fields: {', '.join(JSONL_FIELDS)}")
    required = JSONL_REQUIRED if require_answer else tuple(f for f in JSONL_REQUIRED if f != "answer")
    for name in required:
        if name not in row:
            raise ValueError(f"{where}: missing field {name!r} (required: {', '.join(required)})")
    question, choices, answer = row["question"], row["choices"], row.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: field 'question' must be a non-empty string")
    if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
        raise ValueError(f"{where}: field 'choices' must be a list of non-empty strings")
    if len(choices) < 2:
        raise ValueError(f"{where}: field 'choices' has {len(choices)} choice(s); at least 2 are needed")
    if answer is None and not require_answer:
        label = None
    elif isinstance(answer, bool) or not isinstance(answer, int | str):
        raise ValueError(f"{where}: field 'answer' must be a choice index or the text of a choice")
    elif isinstance(answer, str):
        if answer not in choices:
            raise ValueError(f"{where}: field 'answer' {answer!r} is not one of the choices")
        label = choices.index(answer)
    elif not 0 <= answer < len(choices):
        raise ValueError(
            f"{where}: field 'answer' {answer} is out of range for {len(choices)} choices (0..{len(choices) - 1})"
        )
    else:
        label = answer
    ex_id = row.get("id", default_id)
    if not isinstance(ex_id, str | int) or not str(ex_id):
        raise ValueError(f"{where}: field 'id' must be a non-empty string or an integer")
    context = row.get("context")
    if context is not None and not isinstance(context, str):
        raise ValueError(f"{where}: field 'context' must be a string")
    return Example(
        id=str(ex_id),
        question=question.strip(),
        choices=tuple(c.strip() for c in choices),
        label=label,
        context=context or None,
    )


class _HasId(Protocol):
    id: str


Row = TypeVar("Row", bound=_HasId)


def read_jsonl(path: str | Path, parse: Callable[[object, str, str], Row]) -> list[Row]:
    """Every non-blank line of a JSONL file through ``parse(value, where, default_id)`` (``where`` =
    ``PATH:LINE``, the default id ``line-N``): invalid JSON, duplicate ids and an empty file are
    refused with the file and line; ``parse`` names the field of any other problem."""
    path = Path(path)
    rows: list[Row] = []
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            row = parse(value, where, f"line-{lineno}")
            if row.id in first_line:
                raise ValueError(f"{where}: duplicate id {row.id!r} (first on line {first_line[row.id]})")
            first_line[row.id] = lineno
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no examples (the file is empty)")
    return rows


def load_jsonl(path: str | Path, *, require_answer: bool = True) -> list[Example]:
    """Read a JSONL file of ``{"question", "choices", "answer"}`` rows (see the module docstring);
    ``require_answer=False``: ``answer`` may be left out (questions to answer, label None)."""
    return read_jsonl(
        path, lambda value, where, default_id: parse_question(value, where, default_id, require_answer)
    )


@functools.cache
def _offline_pool(task: str) -> tuple[Example, ...]:
    return tuple(get_task(task).offline())


def _jsonl_path(task: str) -> Path:
    path = Path(task[len(JSONL_PREFIX) :])
    if not path.is_file():
        raise FileNotFoundError(f"task {task!r}: no such file {path}")
    return path


def load_examples(task: str) -> list[Example]:
    """All examples of ``task``'s offline pool (or of a ``jsonl:PATH`` file), sorted by id."""
    if task.startswith(JSONL_PREFIX):
        return sorted(load_jsonl(_jsonl_path(task)), key=lambda e: e.id)
    return list(_offline_pool(get_task(task).name))


def jsonl_split_sizes(n_pool: int) -> dict[str, int]:
    """A JSONL pool: test 20%, validation 10% (at least 1 each, from 3 examples up)."""
    if n_pool < 3:
        raise ValueError(f"{n_pool} example(s); at least 3 are needed for train/validation/test")
    return {"n_test": max(1, n_pool // 5), "n_validation": max(1, n_pool // 10)}


def shuffled_pool(examples: Sequence[Row], seed: int) -> list[Row]:
    """The examples sorted by id, then shuffled with ``seed``: the split rule's order."""
    pool = sorted(examples, key=lambda e: e.id)
    random.Random(seed).shuffle(pool)
    return pool


def split_examples(examples: Sequence[Example], *, seed: int = 0, n_validation: int, n_test: int) -> Splits:
    """Shuffle the id-sorted pool with ``seed``; test = first ``n_test``, validation = next ``n_validation``."""
    if n_validation < 0 or n_test < 0:
        raise ValueError(f"split sizes must be >= 0, got n_validation={n_validation}, n_test={n_test}")
    if n_validation + n_test > len(examples):
        raise ValueError(
            f"n_test + n_validation = {n_test} + {n_validation} exceeds the {len(examples)} available examples"
        )
    pool = shuffled_pool(examples, seed)
    return Splits(
        train=pool[n_test + n_validation :],
        validation=pool[n_test : n_test + n_validation],
        test=pool[:n_test],
    )


def _hub_splits(
    task: Task, *, seed: int, n_validation: int | None, n_test: int | None, paper: bool = False
) -> Splits:
    """Official hub splits; validation carved from train (10%, seeded) where the task has none apart.
    ``paper``: the official validation split is the test split (MMLU keeps its test split)."""
    hub = task.hub()
    if paper and task.paper_tests_validation and hub.validation is not None:
        hub = HubSplits(train=hub.train, validation=None, test=hub.validation)
    train = shuffled_pool(hub.train, seed)
    validation = hub.validation
    if validation is None:
        k = n_validation if n_validation is not None else max(1, len(train) // 10)
        validation, train = train[:k], train[k:]
    else:
        validation = shuffled_pool(validation, seed)[:n_validation]
    return Splits(train=train, validation=validation, test=shuffled_pool(hub.test, seed)[:n_test])


def _cap_train(splits: Splits, *caps: int | None) -> Splits:
    limits = [c for c in caps if c is not None]
    if not limits:
        return splits
    return Splits(train=splits.train[: min(limits)], validation=splits.validation, test=splits.test)


def load_splits(
    task: str,
    *,
    seed: int = 0,
    n_validation: int | None = None,
    n_test: int | None = None,
    max_train: int | None = None,
    source: str = "offline",
) -> Splits:
    """Load ``task`` from ``source`` and split it (see the module docstring and :mod:`scalabl.tasks`)."""
    source = Source.parse(source, "source")
    if max_train is not None and max_train < 0:
        raise ValueError(f"max_train must be >= 0, got {max_train}")
    task_cap = None
    if task.startswith(JSONL_PREFIX):
        examples = load_examples(task)
        defaults = jsonl_split_sizes(len(examples))
    else:
        spec = get_task(task)
        task_cap = spec.max_train
        if source in (Source.HUB, Source.PAPER):
            splits = _hub_splits(
                spec, seed=seed, n_validation=n_validation, n_test=n_test, paper=source == Source.PAPER
            )
            return _cap_train(splits, task_cap, max_train)
        examples = load_examples(task)
        defaults = spec.split_sizes(len(examples))
    splits = split_examples(
        examples,
        seed=seed,
        n_validation=defaults["n_validation"] if n_validation is None else n_validation,
        n_test=defaults["n_test"] if n_test is None else n_test,
    )
    return _cap_train(splits, task_cap, max_train)
