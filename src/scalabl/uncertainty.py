"""Uncertainty scores of a generated answer, from the answers of S posterior samples and their
likelihoods (:class:`scalabl.generation.Generated`). Higher = less sure, for every score.

With K models in the average (K posterior samples; a deterministic model is its own, K = 1),
``log p(u) = logsumexp_k log p_k(u | x) - log K`` is the posterior predictive of an answer u, and
``y_1..y_S`` are the S answers (one per sample, or S draws of a deterministic model):

* ``msp``: ``-log p(answer)``, the answer's sequence probability under the posterior average;
* ``msp_single``: ``-log p_mean(answer)``, the same under one model (the posterior mean), the
  score a plain fine-tuned model has;
* ``perplexity``: ``-log p(answer) / T``, per answer token (with the stop token);
* ``predictive_entropy``: ``-(1/S) sum_s log p(y_s)``, the Monte Carlo estimate of the entropy of
  the answer distribution (lm-polygraph's ``MonteCarloSequenceEntropy``, on our average);
* ``semantic_entropy``: the S answers clustered by meaning (:func:`cluster`), a cluster's
  probability the sum of its answers' ``p(y_s)`` (each of the S, as drawn), the entropy the mean of
  ``-log p(cluster of y_s)`` over s: Kuhn et al. 2023, as lm-polygraph's ``SemanticEntropy``
  (``class_probability_estimation="sum"``, ``entropy_estimation="mean"``) computes it;
* ``lexical_similarity``: minus the mean token F1 over pairs of the S answers (Fomicheva et al.
  2020; lm-polygraph uses ROUGE-L, which needs rouge-score; token F1 is the SQuAD measure the
  answers are graded by);
* ``distinct_answers``: the number of different answers (SQuAD-normalised) among the S;
  ``semantic_sets``: the number of clusters;
* ``mutual_information``: between the answer and the posterior sample, on the answers the
  question got: ``q_k(u) = p_k(u) / sum_v p_k(v)`` over those, ``MI = H(mean_k q_k) - mean_k H(q_k)``
  (>= 0, at most ``log U``; zero for one model).

The sample-based scores need S >= 1 answers (lexical similarity S >= 2); MI needs K >= 2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from scalabl.choices import AnswerMatch
from scalabl.qa import normalize_answer, token_f1

SINGLE_MODEL_SCORES = ("msp_single",)
POSTERIOR_SCORES = ("msp", "perplexity")
SAMPLE_SCORES = (
    "predictive_entropy",
    "semantic_entropy",
    "lexical_similarity",
    "distinct_answers",
    "semantic_sets",
)
MI_SCORES = ("mutual_information",)
SCORES = SINGLE_MODEL_SCORES + POSTERIOR_SCORES + SAMPLE_SCORES + MI_SCORES

Equivalent = Callable[[str, str], bool]


def equivalence(match: str | AnswerMatch = AnswerMatch.EXACT, f1_threshold: float = 0.5) -> Equivalent:
    """When two answers mean the same, offline: equal normalised, or token F1 >= the threshold."""
    match = AnswerMatch.parse(match, "match")
    if match == AnswerMatch.EXACT:
        return lambda a, b: normalize_answer(a) == normalize_answer(b)
    return lambda a, b: normalize_answer(a) == normalize_answer(b) or token_f1(a, [b]) >= f1_threshold


def cluster(answers: Sequence[str], same: Equivalent) -> list[int]:
    """The cluster of each answer: an answer joins the first cluster whose first answer it means the
    same as (both ways), else opens a new one (Kuhn et al.'s algorithm)."""
    heads: list[str] = []
    labels = []
    for a in answers:
        for c, head in enumerate(heads):
            if same(a, head) and same(head, a):
                labels.append(c)
                break
        else:
            heads.append(a)
            labels.append(len(heads) - 1)
    return labels


def average_loglik(loglik: np.ndarray) -> np.ndarray:
    """``[K, U]`` per-model log-likelihoods -> ``[U]`` log of their mean (the posterior predictive)."""
    lp = np.asarray(loglik, dtype=np.float64)
    top = lp.max(axis=0)
    return top + np.log(np.exp(lp - top).mean(axis=0))


def semantic_entropy(sample_loglik: np.ndarray, labels: Sequence[int]) -> float:
    """``-(1/S) sum_s log sum_{j in C(s)} p(y_j)`` (see the module docstring)."""
    lp = np.asarray(sample_loglik, dtype=np.float64)
    labels = np.asarray(labels)
    class_lp = {c: np.logaddexp.reduce(lp[labels == c]) for c in set(labels.tolist())}
    return float(-np.mean([class_lp[c] for c in labels.tolist()]))


def lexical_similarity(answers: Sequence[str]) -> float:
    """Minus the mean token F1 over the pairs of ``answers`` (two or more)."""
    sims = [
        token_f1(answers[i], [answers[j]]) for i in range(len(answers)) for j in range(i + 1, len(answers))
    ]
    return -float(np.mean(sims))


def entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def mutual_information(loglik: np.ndarray) -> float:
    """``H(mean_k q_k) - mean_k H(q_k)`` with ``q_k`` each model's distribution over the U answers."""
    lp = np.asarray(loglik, dtype=np.float64)
    q = np.exp(lp - lp.max(axis=1, keepdims=True))
    q /= q.sum(axis=1, keepdims=True)
    return max(0.0, entropy(q.mean(axis=0)) - float(np.mean([entropy(row) for row in q])))


def scores(
    texts: Sequence[str],
    loglik: np.ndarray,
    samples: Sequence[str],
    answer_loglik_single: float,
    answer_tokens: int,
    same: Equivalent,
) -> dict[str, float]:
    """Every score this question has (see the module docstring); ``texts[0]`` is the answer,
    ``loglik[k, u]`` the log-likelihood of ``texts[u]`` under model k."""
    average = average_loglik(loglik)
    out = {
        "msp_single": -answer_loglik_single,
        "msp": -float(average[0]),
        "perplexity": -float(average[0]) / answer_tokens,
    }
    if samples:
        where = {t: u for u, t in enumerate(texts)}
        sample_lp = np.array([average[where[s]] for s in samples])
        labels = cluster(samples, same)
        out["predictive_entropy"] = -float(sample_lp.mean())
        out["semantic_entropy"] = semantic_entropy(sample_lp, labels)
        out["distinct_answers"] = float(len({normalize_answer(s) for s in samples}))
        out["semantic_sets"] = float(len(set(labels)))
        if len(samples) >= 2:
            out["lexical_similarity"] = lexical_similarity(samples)
    if loglik.shape[0] >= 2:
        out["mutual_information"] = mutual_information(loglik)
    return out
