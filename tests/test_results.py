"""The results format: sample counts name metrics entries and prediction tensors, and read back as integers."""

from scalabl.results import entry, eval_key, evaluations, headline, labels_key, predictions_key


def test_names():
    assert eval_key(10) == "S=10" and predictions_key(10) == "log_probs_S10"
    assert (
        predictions_key(0, "arc_c") == "ood.arc_c.log_probs_S0" and labels_key("arc_c") == "ood.arc_c.labels"
    )
    assert labels_key() == "labels"


def test_entries_are_read_by_their_sample_count():
    section = {"n_test": 5, "S=4": {"n_samples": 4, "acc": 0.5}, "S=0": {"n_samples": 0, "acc": 0.4}}
    assert [(s, r["acc"]) for s, r in evaluations(section)] == [(4, 0.5), (0, 0.4)]
    assert headline({"eval": section}) == 4
    assert entry(section, 0)["acc"] == 0.4 and entry(section, 7) == {}
