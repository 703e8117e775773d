"""How one prediction runs (``PredictConfig``): passed unchanged from the command line to the scorer."""

from __future__ import annotations

from dataclasses import dataclass

from scalabl.config.fields import option

SAMPLE_MODULES_HELP = "all, lm_head, last:K with K >= 1"
DEFAULT_N_SAMPLES = 10  # the posterior samples of a prediction unless told (DESIGN §1)


def parse_sample_modules(spec: str) -> int | None:
    """``"all"`` -> None; ``"lm_head"`` -> 0; ``"last:K"`` -> K (K >= 1). See :mod:`scalabl.subset`."""
    if spec == "all":
        return None
    if spec == "lm_head":
        return 0
    if spec.startswith("last:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            k = 0
        if k >= 1:
            return k
    raise ValueError(f"sample_modules: {spec!r}; allowed: {SAMPLE_MODULES_HELP}")


def check_sample_count(n_samples: int) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 0:
        raise ValueError(f"n_samples: must be an integer >= 0 (0 = posterior mean), got {n_samples!r}")


@dataclass(frozen=True)
class PredictConfig:
    """One prediction: how many posterior samples, of which modules, in what batches, from what seed.

    ``n_samples = 0`` is the posterior mean (one deterministic pass); deterministic methods run that
    whatever is asked, and an ensemble averages its members (see
    :meth:`scalabl.methods.base.Method.samples_for`). Validated once, here.
    """

    n_samples: int = option(
        DEFAULT_N_SAMPLES, "posterior samples in the Bayesian model average (0: the posterior mean)"
    )
    sample_modules: str = option(
        "all",
        "modules that draw posterior samples: all, lm_head, or last:K (those of the last K decoder "
        "layers); the rest use the posterior mean, and the network before them runs once",
    )
    batch_size: int = option(8, "examples per prediction batch")
    batch_samples: bool = option(
        False, "run a batch's S samples as one forward of S x batch sequences (same distribution)"
    )
    seed: int = option(0, "seed of the posterior samples' noise")
    per_question: bool = option(
        False,
        "seed each question's noise by its text and the sample's index, so that its prediction does "
        "not depend on the batch it is in (predict, serve)",
        cli=False,
    )
    progress: bool = option(False, "show a progress bar", cli=False)

    def __post_init__(self) -> None:
        check_sample_count(self.n_samples)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size!r}")
        parse_sample_modules(self.sample_modules)
