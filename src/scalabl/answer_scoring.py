"""The log-likelihood of a free-form answer after its question: what fine-tuning on (question,
answer) pairs minimises and what the uncertainty scores of generated answers read.

An answer is scored as the continuation ``" " + answer + "\\n"`` of the multiple-choice prompt
``"Question: ...\\nAnswer:"`` (:func:`scalabl.scoring.continuation_prompt`, with the context above
it): the model learns to end its answer with the newline that generation stops at. Only the answer
tokens (and the newline) count; the prompt's tokens carry no loss.

:class:`AnswerScorer` is a :class:`scalabl.scoring.Scorer` whose "choices" are answers: a training
row has one (its reference), a row of generated answers (:class:`ScoredAnswers`) has all the
question's answers, which share one pass over the prompt (its KV cache), as a multiple-choice
question's choices do. A row's logits are its answers' summed log-likelihoods, and everything the
scorer does for posterior samples (one noise row per question, data-parallel rows, gradient
checkpointing's cache-free path) serves answers unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from scalabl.choices import LengthNorm, Scoring, Truncation
from scalabl.qa import QAExample
from scalabl.scoring import Encoded, Scorer, continuation_prompt

STOP = "\n"  # an answer's end: trained after every answer, and the stop string of generation


@dataclass(frozen=True)
class ScoredAnswers:
    """Answer texts to score after ``example``'s question (generated ones, or references)."""

    example: QAExample
    texts: tuple[str, ...]


def answer_prompt(example: QAExample) -> str:
    """The prompt an answer follows (the multiple-choice tasks' continuation prompt)."""
    return continuation_prompt(example)  # reads only .context and .question


@dataclass
class PromptPass:
    """A batch's prompts already run (by the decoding that answered them): the left-padded prompts,
    the log-probs at their last position ``[B, V]``, the attention mask and the KV cache over them."""

    prompts: list[list[int]]
    last: torch.Tensor
    mask: torch.Tensor
    cache: object


class AnswerScorer(Scorer):
    """Summed log-likelihood ``[B, U_max]`` of each row's answers (``-inf`` past a row's own): a
    :class:`QAExample`'s first reference (its training target, U = 1) or a :class:`ScoredAnswers`'
    texts."""

    classifies = False  # a row's score is a log-likelihood, not one of several classes

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int | None = None,
        truncation: str = Truncation.LEFT,
        reuse_prompt: bool = True,
    ) -> None:
        super().__init__(
            tokenizer,
            Scoring.CONTINUATION,
            length_norm=LengthNorm.NONE,
            max_length=max_length,
            truncation=truncation,
            reuse_prompt=reuse_prompt,
        )

    prefilled: PromptPass | None = None

    @contextmanager
    def prompts_run(self, state: PromptPass | None) -> Iterator[None]:
        """Score the next batch from ``state`` (its prompts as the decoding ran them, under the same
        model) instead of running the prompts again; None, or prompts that differ: run them."""
        self.prefilled = state
        try:
            yield
        finally:
            self.prefilled = None

    def _prompt_pass(self, model, encoded, device, use_cache, branch):  # type: ignore[override]
        state, self.prefilled = (
            self.prefilled,
            None,
        )  # the cache is re-indexed in place: it serves one scoring
        # a prompt cut otherwise to make room for a longer answer than decoding allowed: run them again
        if state is None or branch is not None or [e.prompt for e in encoded] != state.prompts:
            return super()._prompt_pass(model, encoded, device, use_cache, branch)
        return state.last.to(device), state.mask.to(device), state.cache

    def prompt_ids(self, example: QAExample) -> list[int]:
        """The prompt's token ids, before any truncation (:meth:`fit_prompt`)."""
        return self.tokenizer.encode(answer_prompt(example), add_special_tokens=True)

    def encode(self, item: QAExample | ScoredAnswers) -> Encoded:  # type: ignore[override]
        if item in self._cache:
            return self._cache[item]
        example, texts = (
            (item.example, item.texts) if isinstance(item, ScoredAnswers) else (item, item.answers[:1])
        )
        continuations = [" " + text.strip() + STOP for text in texts]
        targets = [self.tokenizer.encode(c, add_special_tokens=False) for c in continuations]
        prompt = self.fit_prompt(self.prompt_ids(example), max(map(len, targets)), example.id)
        encoded = Encoded(prompt, targets, len(targets), tuple(map(len, continuations)))
        self._cache[item] = encoded
        return encoded

    def fit_prompt(self, prompt: list[int], room: int, example_id: str) -> list[int]:
        """``prompt`` cut from the left (or refused) so that ``room`` tokens fit after it."""
        budget = self.max_length - room
        if budget < 1:
            raise ValueError(f"question {example_id}: {room} answer tokens leave no room for the prompt")
        if len(prompt) > budget and self.truncation == Truncation.ERROR:
            raise ValueError(
                f"question {example_id}: prompt of {len(prompt)} tokens does not fit the model context of "
                f"{self.max_length} tokens with {room} answer tokens; shorten it or allow truncation='left'"
            )
        return prompt[-budget:]

    def answer_tokens(self, items: Sequence[QAExample | ScoredAnswers]) -> torch.Tensor:
        """The number of scored tokens of each row's first answer ``[B]``."""
        return torch.tensor([len(self.encode(x).choices[0]) for x in items])

    def loss(self, logits: torch.Tensor, items: Sequence[QAExample | ScoredAnswers]) -> torch.Tensor:
        """Mean negative log-likelihood per answer token over the batch (supervised fine-tuning's loss)."""
        return -logits[:, 0].sum() / self.answer_tokens(items).sum().to(logits.device)
