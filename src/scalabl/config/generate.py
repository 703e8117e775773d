"""How answers are generated and their uncertainty scored (``GenerateConfig``): ``scalabl generate``,
and the evaluation of runs on open QA tasks."""

from __future__ import annotations

from dataclasses import dataclass

from scalabl.choices import AnswerMatch, Decoding
from scalabl.config.fields import JSONConfig, coerce_choices, option, positive_ints
from scalabl.config.predict import check_sample_count


@dataclass
class GenerateConfig(JSONConfig):
    """One generation: the posterior-mean answer plus one answer per posterior sample, and how the
    answers are compared (see :mod:`scalabl.generation` and :mod:`scalabl.uncertainty`)."""

    label = "generate config"

    n_samples: int = option(
        5,
        "answers beside the posterior-mean one: one per posterior sample (an ensemble: its members; "
        "a deterministic model: none unless --decoding sample)",
        flag="--gen-samples",
    )
    decoding: Decoding = option(Decoding.GREEDY, "how each sample writes its answer: greedy or sampled")
    temperature: float = option(
        1.0, "sampled decoding: the next-token distribution's temperature", flag="--gen-temperature"
    )
    max_new_tokens: int = option(24, "tokens of an answer at most (it stops at a newline)")
    batch_size: int = option(16, "questions per generation batch", flag="--gen-batch-size")
    seed: int = option(0, "seed of the posterior samples and of sampled decoding", flag="--gen-seed")
    match: AnswerMatch = option(
        AnswerMatch.EXACT, "when two answers mean the same offline: normalised exact match, or token F1"
    )
    f1_threshold: float = option(0.5, "--match f1: the token F1 at which two answers mean the same")
    nli_model: str | None = option(
        None,
        "an NLI model (hub id or local folder) clustering answers by mutual entailment instead",
        shown="none",
    )

    def __post_init__(self) -> None:
        coerce_choices(self)
        check_sample_count(self.n_samples)
        positive_ints(self, "max_new_tokens", "batch_size")
        for name, low, high in (("temperature", 0.0, float("inf")), ("f1_threshold", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
                raise ValueError(f"{name}: must be in ({low}, {high}], got {value!r}")
