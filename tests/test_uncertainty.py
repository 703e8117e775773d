"""The uncertainty scores of generated answers against hand computations on small arrays, torch's
logsumexp and entropy, and (where the ``polygraph`` extra is installed) lm-polygraph's estimators
fed the same samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scalabl.uncertainty import (
    SCORES,
    average_loglik,
    cluster,
    equivalence,
    lexical_similarity,
    mutual_information,
    scores,
    semantic_entropy,
)

# Two models (K = 2), three distinct answers of one question; the answer is texts[0].
TEXTS = ["Paris", "paris.", "Lyon"]
LOGLIK = np.log(np.array([[0.5, 0.2, 0.1], [0.3, 0.1, 0.4]]))
SAMPLES = ["Paris", "Lyon", "paris."]  # one answer per model, and one more draw


def test_average_loglik_is_the_log_of_the_mean_probability():
    expected = torch.logsumexp(torch.tensor(LOGLIK), dim=0) - math.log(2)
    np.testing.assert_allclose(average_loglik(LOGLIK), expected.numpy(), rtol=1e-12)
    np.testing.assert_allclose(np.exp(average_loglik(LOGLIK)), [0.4, 0.15, 0.25], rtol=1e-12)


def test_clusters_by_normalised_match_and_by_f1():
    exact = equivalence("exact")
    assert cluster(["Paris", "Lyon", "paris.", "the Paris"], exact) == [0, 1, 0, 0]
    f1 = equivalence("f1", 0.5)
    # "Paris France" vs "Paris": F1 = 2 * (1/2 * 1) / (1/2 + 1) = 2/3 >= 0.5
    assert cluster(["Paris", "Paris France", "Lyon"], f1) == [0, 0, 1]
    assert cluster(["Paris", "Paris France", "Lyon"], equivalence("f1", 0.9)) == [0, 1, 2]


def test_semantic_entropy_by_hand():
    p = np.exp(average_loglik(LOGLIK))  # Paris .4, paris. .15, Lyon .25
    lp = np.log([p[0], p[2], p[1]])  # the samples' p(y_s), as drawn
    labels = cluster(SAMPLES, equivalence())  # {Paris, paris.}, {Lyon}
    assert labels == [0, 1, 0]
    # cluster probabilities: .4 + .15 = .55 and .25; mean over the three samples of -log p(C(s))
    expected = -(math.log(0.55) + math.log(0.25) + math.log(0.55)) / 3
    assert semantic_entropy(lp, labels) == pytest.approx(expected, rel=1e-12)


def test_lexical_similarity_is_minus_the_mean_pairwise_token_f1():
    # pairs: (x y, x z) F1 .5; (x y, w) 0; (x z, w) 0
    assert lexical_similarity(["x y", "x z", "w"]) == pytest.approx(-0.5 / 3)
    assert lexical_similarity(["x", "x"]) == -1.0


def test_mutual_information_by_hand_and_zero_for_agreeing_models():
    q = np.exp(LOGLIK) / np.exp(LOGLIK).sum(axis=1, keepdims=True)  # [.625 .25 .125], [.375 .125 .5]
    mean = q.mean(axis=0)
    h = lambda r: float(torch.distributions.Categorical(probs=torch.tensor(r)).entropy())  # noqa: E731
    expected = h(mean) - (h(q[0]) + h(q[1])) / 2
    assert mutual_information(LOGLIK) == pytest.approx(expected, rel=1e-9)
    assert expected > 0
    same = np.log(np.array([[0.5, 0.2, 0.1], [0.5, 0.2, 0.1]]))
    assert mutual_information(same) == pytest.approx(0.0, abs=1e-12)
    assert mutual_information(LOGLIK) <= math.log(3)


def test_every_score_of_a_question():
    out = scores(
        TEXTS, LOGLIK, SAMPLES, answer_loglik_single=math.log(0.45), answer_tokens=2, same=equivalence()
    )
    assert set(out) == set(SCORES)
    assert out["msp_single"] == pytest.approx(-math.log(0.45))
    assert out["msp"] == pytest.approx(-math.log(0.4))
    assert out["perplexity"] == pytest.approx(-math.log(0.4) / 2)
    assert out["predictive_entropy"] == pytest.approx(-(math.log(0.4) + math.log(0.25) + math.log(0.15)) / 3)
    assert out["distinct_answers"] == 2.0  # "Paris" and "paris." normalise alike
    assert out["semantic_sets"] == 2.0
    # one model, no samples: only the sequence-probability scores
    single = scores(["Paris"], LOGLIK[:1, :1], [], math.log(0.5), 2, equivalence())
    assert set(single) == {"msp_single", "msp", "perplexity"}
    assert single["msp"] == single["msp_single"]


# ---- lm-polygraph's estimators on the same inputs ---------------------------------------------------
def _polygraph():
    return pytest.importorskip("lm_polygraph.estimators", reason="the polygraph extra is not installed")


def test_our_scores_equal_lm_polygraphs_estimators_on_our_samples():
    est = _polygraph()
    p = average_loglik(LOGLIK)
    where = {t: u for u, t in enumerate(TEXTS)}
    sample_lp = [p[where[s]] for s in SAMPLES]
    labels = cluster(SAMPLES, equivalence())
    classes = [[i for i, c in enumerate(labels) if c == k] for k in sorted(set(labels))]
    stats = {
        "sample_log_probs": [sample_lp],
        "sample_texts": [SAMPLES],
        "semantic_classes_entail": {
            "class_to_sample": [classes],
            "sample_to_class": [dict(enumerate(labels))],
        },
        # a sequence's log-likelihood split into tokens: their sum and mean are what the estimators read
        "greedy_log_likelihoods": [[p[0] / 2, p[0] / 2]],
    }
    ours = scores(TEXTS, LOGLIK, SAMPLES, 0.0, 2, equivalence())
    assert est.SemanticEntropy()(stats)[0] == pytest.approx(ours["semantic_entropy"], rel=1e-12)
    assert est.MonteCarloSequenceEntropy()(stats)[0] == pytest.approx(ours["predictive_entropy"], rel=1e-12)
    assert est.MaximumSequenceProbability()(stats)[0] == pytest.approx(ours["msp"], rel=1e-12)
    assert est.Perplexity()(stats)[0] == pytest.approx(ours["perplexity"], rel=1e-12)
    # lexical similarity: ROUGE-L there, token F1 here; on one-word answers without stems both are
    # the fraction of equal words
    words = ["paris", "lyon", "paris"]
    rouge = est.LexicalSimilarity("rougeL")({"sample_texts": [words]})[0]
    assert rouge == pytest.approx(lexical_similarity(words))


def test_our_prr_equals_lm_polygraphs_prediction_rejection_area_normalised():
    pytest.importorskip("lm_polygraph.ue_metrics", reason="the polygraph extra is not installed")
    from lm_polygraph.ue_metrics import PredictionRejectionArea

    from scalabl.rejection import prediction_rejection_ratio

    rng = np.random.default_rng(0)
    u = rng.permutation(40).astype(float)  # no ties: both sort the same way
    correct = (rng.random(40) < 0.5 - 0.01 * (u - 20)).astype(float)
    area = PredictionRejectionArea()
    # lm-polygraph's normalisation of an area: (area - random) / (oracle - random); the random
    # rejection's area is the mean quality, the oracle rejects the wrong answers first
    random = correct.mean()
    oracle = area(-correct + 1e-6 * np.arange(40), correct)
    expected = (area(u, correct) - random) / (oracle - random)
    assert prediction_rejection_ratio(u, correct) == pytest.approx(expected, rel=1e-9)
