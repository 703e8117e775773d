"""The adapter and posterior settings of a method (``MethodConfig``)."""

from __future__ import annotations

from dataclasses import dataclass

from scalabl.choices import (
    Covariance,
    KLDirection,
    LaplaceHessian,
    LaplacePredictive,
    LaplaceSubset,
    MethodName,
    NoiseMode,
    NoiseSharing,
    PriorFit,
    XSPosterior,
)
from scalabl.config.fields import JSONConfig, coerce_choices, option, positive_ints

METHOD_DEFAULT = "the method's own"


@dataclass
class MethodConfig(JSONConfig):
    """Adapter and posterior settings. Fields a method does not use are ignored by it.

    ``dropout``, ``prior_std`` and ``sigma_init`` left at ``None`` take the method's own default
    (see :attr:`scalabl.methods.base.Method.default_dropout` and its siblings, and docs/methods.md).
    """

    label = "method config"

    method: MethodName = option(MethodName.SCALABL, "method (scalabl methods lists them)")
    rank: int = option(8, "LoRA rank r")
    alpha: float = option(16.0, "LoRA alpha (the adapter is scaled by alpha / r)")
    dropout: float | None = option(None, "LoRA dropout (mcdropout 0.1, the others 0)", shown=METHOD_DEFAULT)
    target_modules: tuple[str, ...] | None = option(
        None,
        "comma-separated modules that get an adapter",
        flag="--targets",
        shown="peft's for the architecture (q_proj,v_proj on Llama, Qwen, Gemma, Mistral)",
    )
    sigma_init: float | None = option(
        None,
        "scalabl/blob: initial posterior std scale eps, sigma_0 ~ U(eps/sqrt 2, eps) (blob: rho_0)",
        shown=METHOD_DEFAULT,
    )
    prior_std: float | None = option(
        None, "scalabl/blob/map: std of the N(0, prior_std^2) prior", shown=METHOD_DEFAULT
    )
    kl_direction: KLDirection = option(
        KLDirection.CORRECT, "correct = KL(q||p); reference = KL(p||q), as the paper's code computes it"
    )
    noise: NoiseMode = option(
        NoiseMode.SEQUENCE, "sequence = one noise draw per sequence; shared = one per forward"
    )
    noise_sharing: NoiseSharing = option(
        NoiseSharing.MODULE,
        "scalabl: module = independent noise per module (the paper); layer / adapter = one draw shared "
        "by a layer's (or all) modules, scaled per module",
    )
    covariance: Covariance = option(
        Covariance.DIAGONAL,
        "scalabl: diagonal = r scales per module (the paper); full = a Cholesky factor over the r dims",
    )
    prior_fit: PriorFit = option(
        PriorFit.FIXED,
        "scalabl: fixed = N(0, prior_std^2); module / model = the prior variance fitted by empirical "
        "Bayes (type-II ML) per module or for the whole adapter",
    )
    ensemble_size: int = option(3, "ensemble: number of members K")
    tfb_tolerance: float = option(0.01, "tfb: largest allowed rise of the validation NLL (nats)")
    tfb_samples: int = option(4, "tfb: posterior samples per validation NLL")
    tfb_search_steps: int = option(8, "tfb: bisection steps of the beta search")
    laplace_subset: LaplaceSubset = option(
        LaplaceSubset.ALL, "laplace: all LoRA weights or the adapters of the last layer"
    )
    laplace_hessian: LaplaceHessian = option(LaplaceHessian.KRON, "laplace: Hessian structure")
    laplace_predictive: LaplacePredictive = option(
        LaplacePredictive.GLM, "laplace: linearised (glm) or sampled (mc) predictive"
    )
    laplace_max_train: int = option(256, "laplace: training examples the Hessian is estimated on")
    ivon_lr: float = option(
        0.03, "ivon: IVON's learning rate (a step is at most lr x ivon_clip_radius per weight)"
    )
    ivon_ess: float = option(
        1e7, "ivon: effective sample size; the posterior precision is ess (h + weight_decay)"
    )
    ivon_hess_init: float = option(3e-4, "ivon: initial Hessian h_0 (initial posterior std 1/sqrt(ess h_0))")
    ivon_beta2: float = option(0.99999, "ivon: rate of the Hessian's moving average")
    ivon_clip_radius: float = option(1e-3, "ivon: bound on each coordinate of the preconditioned step")
    ivon_train_samples: int = option(1, "ivon: weight samples per training step (their gradients averaged)")
    xs_posterior: XSPosterior = option(
        XSPosterior.SWAG,
        "blora_xs: swag = SWAG's diagonal + low-rank Gaussian (the paper); laplace = laplace-torch",
    )
    swag_rank: int = option(10, "blora_xs: columns K of SWAG's deviation matrix (its low-rank part)")
    swag_start: float = option(
        0.5, "blora_xs: fraction of the steps after which SWAG collects, at the learning rate held from there"
    )
    swag_every: int = option(1, "blora_xs: steps between SWAG's collected iterates")
    temperature: bool = option(False, "fit a temperature on the validation split after training (any method)")

    def __post_init__(self) -> None:
        if isinstance(self.method, str) and self.method not in MethodName.values():
            raise ValueError(
                f"method: unknown method {self.method!r}; allowed: {', '.join(MethodName.values())}"
            )
        coerce_choices(self)
        if self.target_modules is not None:
            self.target_modules = tuple(self.target_modules)
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank: must be a positive integer, got {self.rank!r}")
        if self.alpha <= 0:
            raise ValueError(f"alpha: must be > 0, got {self.alpha!r}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout!r}")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("target_modules: name at least one module, or leave it unset for the defaults")
        for name in ("sigma_init", "prior_std"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name}: must be > 0, got {v!r}")
        positive_ints(
            self,
            "ensemble_size",
            "tfb_samples",
            "tfb_search_steps",
            "laplace_max_train",
            "ivon_train_samples",
            "swag_rank",
            "swag_every",
        )
        if not 0.0 <= self.swag_start < 1.0:
            raise ValueError(f"swag_start: must be in [0, 1), got {self.swag_start!r}")
        for name in ("ivon_lr", "ivon_ess", "ivon_hess_init", "ivon_clip_radius"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.ivon_beta2 <= 1.0:
            raise ValueError(f"ivon_beta2: must be in [0, 1], got {self.ivon_beta2!r}")
        if self.prior_fit != "fixed" and self.kl_direction != "correct":
            raise ValueError(
                "prior_fit: empirical Bayes is derived for kl_direction 'correct' (KL(q || p)); "
                f"got kl_direction {self.kl_direction.value!r}"
            )
        if self.tfb_tolerance < 0:
            raise ValueError(f"tfb_tolerance: must be >= 0, got {self.tfb_tolerance!r}")
