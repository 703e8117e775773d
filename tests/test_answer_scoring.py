"""The answer scorer against a plain forward: several answers after one prompt, the training loss
over the answer tokens only, and a prompt cut (or refused) to fit the context."""

from __future__ import annotations

import pytest
import torch

from scalabl.answer_scoring import STOP, AnswerScorer, ScoredAnswers
from scalabl.qa import QAExample
from scalabl.testing import make_byte_tokenizer, make_tiny_llama

Q = QAExample("q", "Capital of France?", ("Paris",), context="France is in Europe.")


def _plain(model, tok, example: QAExample, answer: str) -> tuple[float, int]:
    prompt = AnswerScorer(tok).prompt_ids(example)
    target = tok.encode(" " + answer + STOP, add_special_tokens=False)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + target])).logits[0].double(), -1)
    return float(sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(target))), len(target)


def test_answers_after_one_prompt_match_a_plain_forward():
    model, tok = make_tiny_llama(), make_byte_tokenizer()
    scorer = AnswerScorer(tok)
    rows = [ScoredAnswers(Q, ("Paris", "Lyon on the Rhone")), ScoredAnswers(Q, ("Rome",))]
    with torch.no_grad():
        logits = scorer.class_logits(model, rows, sample=False)
    assert logits.shape == (2, 2) and logits[1, 1] == float("-inf")
    for r, row in enumerate(rows):
        for u, text in enumerate(row.texts):
            assert float(logits[r, u]) == pytest.approx(_plain(model, tok, Q, text)[0], abs=1e-4)


def test_the_training_loss_is_the_nll_per_answer_token():
    model, tok = make_tiny_llama(), make_byte_tokenizer()
    scorer = AnswerScorer(tok)
    other = QAExample("r", "2+2?", ("four",))
    logits = scorer.class_logits(model, [Q, other], sample=False)
    (lp_a, n_a), (lp_b, n_b) = _plain(model, tok, Q, "Paris"), _plain(model, tok, other, "four")
    assert float(scorer.loss(logits, [Q, other]).detach()) == pytest.approx(
        -(lp_a + lp_b) / (n_a + n_b), abs=1e-5
    )
    assert scorer.answer_tokens([Q, other]).tolist() == [n_a, n_b]


def test_a_long_prompt_is_cut_from_the_left_or_refused():
    tok = make_byte_tokenizer()
    cut = AnswerScorer(tok, max_length=20)
    encoded = cut.encode(Q)
    assert len(encoded.prompt) + len(encoded.choices[0]) == 20
    assert encoded.prompt == cut.prompt_ids(Q)[-len(encoded.prompt) :]  # the question's end is kept
    with pytest.raises(ValueError, match="does not fit the model context of 20 tokens"):
        AnswerScorer(tok, max_length=20, truncation="error").encode(Q)
