"""The Python API: wrap a model, fit, predict with posterior samples, save and load.

>>> from scalabl import BayesianLoRA, MethodConfig, load_model, load_splits
>>> model, tokenizer = load_model()                      # embedded SmolLM2-135M-Instruct
>>> splits = load_splits("arc_easy")
>>> blora = BayesianLoRA(model, tokenizer, MethodConfig(method="scalabl"))
>>> blora.fit(splits.train, steps=100)
>>> blora.calibrate(splits.validation)                   # post hoc: TFB, Laplace, temperature
>>> probs = blora.predict_proba(splits.test, n_samples=10)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from peft import set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scalabl import __version__
from scalabl.answer_scoring import AnswerScorer
from scalabl.bayesian import lora_layers
from scalabl.calibration import apply_temperature, fit_temperature
from scalabl.choices import DEFAULT_LENGTH_NORM, LengthNorm, MethodName, Scoring, Truncation
from scalabl.config import MethodConfig, PredictConfig, TrainConfig
from scalabl.config.predict import DEFAULT_N_SAMPLES
from scalabl.examples import Example
from scalabl.io import atomic_path, write_json
from scalabl.methods import get_method
from scalabl.metrics import compute_metrics
from scalabl.predict import bayesian_model_average
from scalabl.qa import QAExample
from scalabl.scoring import Scorer

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
# adapters in plain peft LoRA format
PLAIN_LORA_METHODS = (MethodName.MLE, MethodName.MAP, MethodName.TEMPERATURE)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; anything else (a pickle, a truncated file) is refused, unread."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{path}: not a valid safetensors file ({err}); scalabl never loads pickles"
        ) from err


@dataclass(frozen=True)
class Prediction:
    """What a prediction returns: the model average and the samples it averages."""

    log_probs: torch.Tensor  # [N, C_max] float64: the Bayesian model average (tempered if fitted)
    samples: torch.Tensor  # [S, N, C_max] float64: each posterior sample's log-probabilities


class BayesianLoRA:
    """A base model with a (Bayesian) LoRA adapter of the chosen method.

    Args:
        model: a Hugging Face causal LM (it is wrapped in place by peft).
        tokenizer: its tokenizer.
        config: the method and adapter settings.
        scoring: ``"continuation"`` or ``"letter"`` (see :mod:`scalabl.scoring`).
        length_norm: continuation scores summed (``"none"``) or divided by the choice's tokens
            (``"tokens"``) or characters (``"chars"``); see :mod:`scalabl.scoring`.
        truncation: a prompt longer than the context is cut from the left with a warning
            (``"left"``) or refused (``"error"``).
        max_length: tokens of a prompt and its longest answer at most (default: the tokenizer's
            limit, 2048 where it has none).
        seed: seeds the adapter initialisation.
        gradient_checkpointing: recompute each decoder layer's activations in backward instead of
            keeping them (training memory grows with one layer, not all). Training then scores
            continuations without the prompt cache (same logits, more compute).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: MethodConfig | None = None,
        *,
        scoring: str = Scoring.CONTINUATION,
        length_norm: str = DEFAULT_LENGTH_NORM,
        truncation: str = Truncation.LEFT,
        max_length: int | None = None,
        seed: int = 0,
        gradient_checkpointing: bool = False,
    ) -> None:
        self.config = config or MethodConfig()
        self.method = get_method(self.config)
        self.tokenizer = tokenizer
        self.scorer = Scorer(
            tokenizer, scoring, length_norm=length_norm, max_length=max_length, truncation=truncation
        )
        self.gradient_checkpointing = gradient_checkpointing
        torch.manual_seed(seed)
        self.model = self.method.wrap(model)
        self.config = self.method.config  # with the target modules the wrap resolved
        if gradient_checkpointing:
            # Non-reentrant checkpointing: needs no input that requires grad (the base is frozen)
            # and restores the RNG state, so recomputed dropout masks match.
            base = self.model.get_base_model()
            if hasattr(base, "activation_checkpointing_enable"):  # the name since transformers 5.x
                base.activation_checkpointing_enable({"use_reentrant": False})
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.eval()
        self.history: list[dict[str, Any]] = []
        self.temperature: float | None = None  # fitted by calibrate() when the config asks for it
        self.fitted: dict[str, Any] = {}  # what calibrate() fitted (beta, temperature, ...)
        # the run whose adapter init_from took whole (same method and settings): its predictions
        # are this model's before a temperature
        self.same_as_run: Path | None = None

    def answer_scorer(self, *, reuse_prompt: bool = True) -> AnswerScorer:
        """An :class:`AnswerScorer` with this model's tokenizer, context length and truncation."""
        s = self.scorer
        return AnswerScorer(
            s.tokenizer, max_length=s.max_length, truncation=s.truncation, reuse_prompt=reuse_prompt
        )

    def train_scorer(self, answers: bool = False) -> Scorer:
        """The scorer training uses: ``scorer`` (``answers``: an :class:`AnswerScorer` with its
        settings, for open questions), or its cache-free twin under gradient checkpointing (a
        checkpointed forward keeps no KV cache, so each choice is scored with its prompt)."""
        s = self.scorer
        if answers:
            return self.answer_scorer(reuse_prompt=not self.gradient_checkpointing)
        if not self.gradient_checkpointing:
            return s
        return Scorer(
            s.tokenizer,
            s.mode,
            length_norm=s.length_norm,
            max_length=s.max_length,
            truncation=s.truncation,
            reuse_prompt=False,
        )

    @property
    def extra_parameters(self) -> int:
        """Parameters beyond plain LoRA with the same rank and target modules."""
        return self.method.extra_parameters(self.model)

    @property
    def lora_parameters(self) -> int:
        """Parameters of one plain LoRA adapter with the same rank and targets: ``r (in + out)`` per layer."""
        return sum(
            layer.r[name] * (layer.in_features + layer.out_features)
            for _, layer in lora_layers(self.model)
            for name in layer.active_adapters
        )

    def fit(
        self,
        train: Sequence[Example],
        config: TrainConfig | None = None,
        *,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
        on_log: Callable[[dict[str, Any]], None] | None = None,
        validation: Sequence[Example] = (),
        **overrides: Any,
    ) -> list[dict[str, Any]]:
        """Train the adapter; keyword overrides (``steps=200``) replace fields of ``config``.

        ``validation``: its first ``config.val_size`` questions are scored during training, and the
        history's records carry ``val_nll`` / ``val_acc`` (the validation curve).

        ``on_log`` receives each logged record (step, nll, kl, sigma, ...) as training goes. With
        ``checkpoint_dir`` the run is checkpointed every ``config.checkpoint_every`` steps and at the
        end; ``resume=True`` continues from the checkpoint found there.
        """
        config = replace(config or TrainConfig(), **overrides)
        answers = bool(train) and isinstance(train[0], QAExample)  # open questions: loss on the answer
        self.history = self.method.fit(
            self.model,
            self.train_scorer(answers),
            train,
            config,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            progress=progress,
            on_log=on_log,
            validation=validation,
        )
        return self.history

    @property
    def uses_temperature(self) -> bool:
        return self.config.temperature or self.method.temperature_scaled

    def calibrate(
        self,
        validation: Sequence[Example],
        *,
        train: Sequence[Example] = (),
        config: PredictConfig | None = None,
    ) -> dict[str, Any]:
        """The post-hoc step after training: the method's own (TFB's beta, Laplace's Hessian), then the
        temperature if the config asks for one. Returns what was fitted; a no-op for most methods.

        ``validation`` must be held out from training; Laplace also reads ``train``. ``config`` is how
        the validation predictions run (its seed also seeds the method's own search).
        """
        config = config or PredictConfig()
        facts = self.method.post_fit(
            self.model,
            self.scorer,
            train=train,
            validation=validation,
            seed=config.seed,
            progress=config.progress,
        )
        if self.uses_temperature:
            if len(validation) == 0:
                raise ValueError("temperature scaling needs a non-empty validation split")
            self.temperature = None
            labels = torch.tensor([e.label for e in validation])
            self.temperature = fit_temperature(self.predict(validation, config).log_probs, labels)
            facts["temperature"] = self.temperature
        self.fitted = facts
        return facts

    def predict(self, examples: Sequence[Example], config: PredictConfig) -> Prediction:
        """The method's posterior samples and their Bayesian model average (computed here, once).

        Deterministic methods run one pass whatever ``config.n_samples`` says; an ensemble averages
        its K members. A fitted temperature is applied to the model average.
        """
        samples = self.method.predict_samples(self.model, self.scorer, examples, config)
        log_probs = bayesian_model_average(samples)
        if self.temperature is not None:
            log_probs = apply_temperature(log_probs, self.temperature)
        return Prediction(log_probs, samples)

    def predict_log_proba(
        self, examples: Sequence[Example], n_samples: int = DEFAULT_N_SAMPLES, **options: Any
    ) -> torch.Tensor:
        """Predictive log-probabilities ``[N, C_max]`` (float64); ``n_samples=0`` = posterior mean.

        ``options`` are the other fields of :class:`scalabl.config.PredictConfig`: ``batch_size``,
        ``seed``, ``progress``, ``batch_samples`` (the S samples as one forward of S x batch
        sequences) and ``sample_modules`` (``"all"``, ``"lm_head"``, ``"last:K"``: sample only those
        modules, the rest at the posterior mean; see :mod:`scalabl.subset`).
        """
        return self.predict(examples, PredictConfig(n_samples=n_samples, **options)).log_probs

    def predict_proba(
        self, examples: Sequence[Example], n_samples: int = DEFAULT_N_SAMPLES, **options: Any
    ) -> torch.Tensor:
        """Predictive probabilities ``[N, C_max]`` (float64, rows sum to 1)."""
        return self.predict_log_proba(examples, n_samples, **options).exp()

    def evaluate(
        self, examples: Sequence[Example], n_samples: int = DEFAULT_N_SAMPLES, **options: Any
    ) -> dict[str, float]:
        """ACC, ECE, NLL and Brier on labelled examples."""
        log_probs = self.predict_log_proba(examples, n_samples, **options)
        labels = torch.tensor([e.label for e in examples])
        return compute_metrics(log_probs, labels)

    # ---- persistence --------------------------------------------------------------------------
    def save(self, folder: str | Path, **metadata: Any) -> None:
        """Write the adapter (safetensors) and its config (JSON) into ``folder``, atomically."""
        folder = Path(folder)
        state = self.method.adapter_state(self.model)
        with atomic_path(folder / ADAPTER_FILE) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "scalabl": __version__})
        write_json(
            folder / ADAPTER_CONFIG_FILE,
            {
                "scalabl_version": __version__,
                "method": self.config.to_dict(),
                "scoring": self.scorer.mode,
                "length_norm": self.scorer.length_norm,
                "truncation": self.scorer.truncation,
                "max_length": self.scorer.max_length,
                "temperature": self.temperature,
                "fitted": self.fitted,
                **metadata,
            },
        )

    def init_from(self, folder: str | Path) -> None:
        """Start from another run's trained adapter and skip training: a plain-LoRA adapter (an ``mle``
        run) for the post-hoc methods (``tfb``, ``laplace``, ``temperature``; rank and target modules
        must match), or a run of this very method and settings, whose adapter (posterior included) is
        taken whole, so that only what ``calibrate`` fits is new (a temperature on top).
        """
        folder = Path(folder)
        cfg_path, adapter_path = folder / ADAPTER_CONFIG_FILE, folder / ADAPTER_FILE
        if not cfg_path.is_file() or not adapter_path.is_file():
            raise FileNotFoundError(f"{folder}: no saved adapter ({ADAPTER_CONFIG_FILE} and {ADAPTER_FILE})")
        source = MethodConfig.from_dict(json.loads(cfg_path.read_text())["method"])
        if replace(source, temperature=False) == replace(self.config, temperature=False):
            state = read_safetensors(adapter_path)
            self.method.load_adapter_state(self.model, state, str(adapter_path))
            self.same_as_run = folder
            return
        if source.method not in PLAIN_LORA_METHODS:
            raise ValueError(
                f"{folder}: a {source.method!r} adapter cannot seed another method (only a run of the "
                f"same method and settings can); allowed sources: {', '.join(PLAIN_LORA_METHODS)}"
            )
        for name in ("rank", "alpha", "target_modules"):
            if getattr(source, name) != getattr(self.config, name):
                raise ValueError(
                    f"{folder}: {name} {getattr(source, name)!r} differs from this run's {getattr(self.config, name)!r}"
                )
        state = read_safetensors(adapter_path)
        result = set_peft_model_state_dict(self.model, state)
        # The LoRA A/B weights must all arrive; a method's own buffers (tfb's beta) keep their init.
        missing = [k for k in result.missing_keys if "lora_" in k and k.endswith(".weight")]
        if missing:
            raise ValueError(f"{adapter_path}: adapter is missing {len(missing)} tensors, e.g. {missing[0]}")

    @classmethod
    def load(
        cls, folder: str | Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
    ) -> BayesianLoRA:
        """Rebuild a saved adapter on ``model`` (the same base model it was trained on)."""
        folder = Path(folder)
        cfg_path = folder / ADAPTER_CONFIG_FILE
        if not cfg_path.is_file() or not (folder / ADAPTER_FILE).is_file():
            raise FileNotFoundError(f"{folder}: no saved adapter ({ADAPTER_CONFIG_FILE} and {ADAPTER_FILE})")
        meta = json.loads(cfg_path.read_text())
        blora = cls(
            model,
            tokenizer,
            MethodConfig.from_dict(meta["method"]),
            scoring=meta.get("scoring", "continuation"),
            length_norm=meta.get("length_norm", LengthNorm.NONE),
            truncation=meta.get("truncation", "left"),
            max_length=meta.get("max_length"),
        )
        state = read_safetensors(folder / ADAPTER_FILE)
        blora.method.load_adapter_state(blora.model, state, str(folder / ADAPTER_FILE))
        blora.temperature = meta.get("temperature")
        blora.fitted = meta.get("fitted", {})
        blora.model.eval()
        return blora
