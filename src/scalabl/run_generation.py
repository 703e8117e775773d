"""A run on an open QA task, evaluated: answers generated for its test questions, graded against the
references, and every uncertainty score judged by how well it tells wrong answers from right ones
(AUROC, PRR, the accuracy-rejection curve). Written into the run folder as ``generations.jsonl``
(one line per question) and the ``generation`` section of metrics.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scalabl.config import RunConfig
from scalabl.config.generate import GenerateConfig
from scalabl.generation import Generated, Timing, generate_answers
from scalabl.io import write_text
from scalabl.qa import QAExample, exact_match, token_f1
from scalabl.rejection import prediction_rejection_ratio, wrong_vs_right_auroc
from scalabl.resumable import write_resumable
from scalabl.run_folder import GENERATIONS_FILE
from scalabl.uncertainty import SCORES, Equivalent, equivalence, scores


def same_meaning(config: GenerateConfig) -> Equivalent:
    """When two answers mean the same under ``config``: the NLI model's mutual entailment if one is
    named, else the offline match."""
    if config.nli_model:
        from scalabl.nli import nli_equivalence

        return nli_equivalence(config.nli_model)
    return equivalence(config.match, config.f1_threshold)


def graded(
    generated: Sequence[Generated], config: GenerateConfig, same: Equivalent | None = None
) -> list[dict[str, Any]]:
    """One record per question: its answers and every score, and where the question has references,
    whether the answer is right (normalised exact match against any reference), its token F1 and
    the S answers' correctness."""
    same = same or same_meaning(config)
    records = []
    for g in generated:
        refs = g.example.answers
        record = {
            **g.to_dict(),
            "scores": scores(g.texts, g.loglik, g.samples, g.answer_loglik_single, g.answer_tokens, same),
        }
        if refs:
            record |= {
                "references": list(refs),
                "correct": exact_match(g.answer, refs),
                "f1": token_f1(g.answer, refs),
                "samples_correct": [exact_match(s, refs) for s in g.samples],
            }
        records.append(record)
    return records


def score_quality(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """AUROC (wrong vs right) and PRR (on exact match) of each score every record has."""
    correct = np.array([r["correct"] for r in records], dtype=bool)
    out = {}
    for name in SCORES:
        if not records or any(name not in r["scores"] for r in records):
            continue
        u = np.array([r["scores"][name] for r in records], dtype=np.float64)
        out[name] = {
            "auroc": wrong_vs_right_auroc(u, correct),
            "prr": prediction_rejection_ratio(u, correct.astype(np.float64)),
        }
    return out


def generation_metrics(
    records: Sequence[dict[str, Any]], config: GenerateConfig, timing: Timing
) -> dict[str, Any]:
    """The ``generation`` section of metrics.json."""
    samples = [c for r in records for c in r["samples_correct"]]
    return {
        "n": len(records),
        "accuracy": float(np.mean([r["correct"] for r in records])) if records else float("nan"),
        "f1": float(np.mean([r["f1"] for r in records])) if records else float("nan"),
        "sample_accuracy": float(np.mean(samples)) if samples else None,
        "answers_per_question": len(records[0]["samples"]) if records else 0,
        "config": config.to_dict(),
        "scores": score_quality(records),
        "timing": timing.to_dict(),
    }


def evaluate_generation(
    blora, config: RunConfig, out: str | Path, *, progress: bool = False
) -> dict[str, Any]:
    """Generate for the run's evaluation split, grade, write generations.jsonl; returns the metrics."""
    splits = config.splits()
    examples: Sequence[QAExample] = (
        splits.validation if config.eval_split.value == "validation" else splits.test
    )
    if config.max_test:
        examples = examples[: config.max_test]
    timing = Timing()
    generated = generate_answers(blora, examples, config.generate, timing, progress=progress)
    records = graded(generated, config.generate)
    write_text(Path(out) / GENERATIONS_FILE, "".join(json.dumps(r) + "\n" for r in records))
    return {"n_test": len(records), "generation": generation_metrics(records, config.generate, timing)}


def read_generations(run_dir: str | Path) -> list[dict[str, Any]]:
    """The graded records of a run's generations.jsonl."""
    path = Path(run_dir) / GENERATIONS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_generations(
    blora,
    examples: Sequence[QAExample],
    config: GenerateConfig,
    out: str | Path,
    *,
    provenance: dict[str, Any],
    overwrite: bool = False,
    progress: bool = True,
) -> int:
    """``scalabl generate``: one line per question into ``out`` (its answers, every uncertainty score,
    and correctness where the question has references), resumable (:mod:`scalabl.resumable`);
    returns how many questions this call answered."""
    same = same_meaning(config)

    def records(batch: Sequence[QAExample], start: int) -> list[dict[str, Any]]:
        return graded(generate_answers(blora, batch, config, offset=start), config, same)

    return write_resumable(
        examples,
        out,
        records,
        batch_size=config.batch_size,
        provenance=provenance,
        overwrite=overwrite,
        progress=progress,
    )
