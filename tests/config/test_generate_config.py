"""GenerateConfig's checks, and what a run on an open QA task refuses."""

from __future__ import annotations

import pytest

from scalabl.cell_hash import cell_digest
from scalabl.config import MethodConfig, RunConfig
from scalabl.config.generate import GenerateConfig


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_samples": -1}, "n_samples"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"batch_size": 0}, "batch_size"),
        ({"temperature": 0.0}, "temperature"),
        ({"f1_threshold": 1.5}, "f1_threshold"),
        ({"decoding": "beam"}, "decoding"),
        ({"match": "rouge"}, "match"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GenerateConfig(**kwargs)


def test_round_trip_inside_a_run_config():
    config = RunConfig(task="triviaqa", generate=GenerateConfig(n_samples=3, decoding="sample"))
    again = RunConfig.from_dict(config.to_dict())
    assert again.generate == config.generate and again.open_qa
    with pytest.raises(ValueError, match="generate config: unknown field"):
        RunConfig.from_dict({"task": "triviaqa", "generate": {"samples": 3}})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": MethodConfig(method="laplace")}, "train their adapter end to end"),
        ({"method": MethodConfig(method="mle", temperature=True)}, "--temperature"),
        ({"ood": ("arc_c",)}, "--ood is for multiple-choice"),
        ({"scoring": "letter"}, "continuations, not letters"),
    ],
)
def test_an_open_qa_run_refuses_what_needs_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(task="sciq", **kwargs)


def test_a_changed_generate_section_moves_a_cells_hash():
    # at its defaults the section is left out of the hash: the archived hashes pinned in test_bench hold
    plain = cell_digest(RunConfig(task="triviaqa"))
    assert cell_digest(RunConfig(task="triviaqa", generate=GenerateConfig(n_samples=2))) != plain
