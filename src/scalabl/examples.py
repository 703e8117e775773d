"""A multiple-choice example and the three splits of a task: the data every layer passes around."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """One multiple-choice question; ``label`` is the index of the correct choice (None: unknown,
    a question to answer rather than to learn or score)."""

    id: str
    question: str
    choices: tuple[str, ...]
    label: int | None
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
        if self.label is not None and not 0 <= self.label < len(self.choices):
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
