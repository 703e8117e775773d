"""The settings of pool-based active learning (``ActiveConfig``): ``scalabl active``."""

from __future__ import annotations

from dataclasses import dataclass

from scalabl.choices import Acquisition, Start
from scalabl.config.fields import JSONConfig, coerce_choices, option, positive_ints
from scalabl.config.predict import check_sample_count


@dataclass
class ActiveConfig(JSONConfig):
    """Rounds of: train on the labels so far, evaluate on the fixed test set, acquire a batch of the
    pool by the acquisition score (:mod:`scalabl.active`). The model, task, method and training are
    the run config's; its training split is the pool."""

    label = "active config"

    pool: int = option(256, "questions of the training split in the pool (labelled and not)")
    initial: int = option(16, "labelled questions to start from, drawn from the pool at random")
    acquire: int = option(16, "questions labelled per round: the pool's highest acquisition scores")
    rounds: int = option(5, "acquisition rounds (each followed by training and evaluation)")
    acquisition: Acquisition = option(Acquisition.BALD, "the score of an unlabelled question")
    acquisition_samples: int = option(
        10, "posterior samples behind the scores of the pool (an ensemble: its members)"
    )
    start: Start = option(
        Start.COLD, "cold = a fresh adapter each round; warm = the last round's, trained on"
    )
    al_seed: int = option(0, "seed of the initial draw and of random acquisition")

    def __post_init__(self) -> None:
        coerce_choices(self)
        positive_ints(self, "pool", "initial", "acquire", "rounds")
        check_sample_count(self.acquisition_samples)
        needed = self.initial + self.rounds * self.acquire
        if needed > self.pool:
            raise ValueError(
                f"pool: {self.pool} questions cannot give initial {self.initial} + rounds {self.rounds} x "
                f"acquire {self.acquire} = {needed} labels; enlarge --pool or ask for fewer"
            )
