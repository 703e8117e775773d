"""The Python API: wrap a model, fit, predict with posterior samples, save and load.

>>> from scalabl import BayesianLoRA, MethodConfig, load_model, load_splits
>>> model, tokenizer = load_model()                      # embedded SmolLM2-135M-Instruct
>>> splits = load_splits("arc_easy")
>>> blora = BayesianLoRA(model, tokenizer, MethodConfig(method="scalabl"))
>>> blora.fit(splits.train, steps=100)
>>> probs = blora.predict_proba(splits.test, n_samples=10)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scalabl import __version__
from scalabl.data import Example
from scalabl.io import atomic_path, write_json
from scalabl.methods import MethodConfig, get_method
from scalabl.metrics import compute_metrics
from scalabl.predict import predict_log_proba
from scalabl.scoring import Scorer
from scalabl.train import TrainConfig, fit

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"


class BayesianLoRA:
    """A base model with a (Bayesian) LoRA adapter of the chosen method.

    Args:
        model: a Hugging Face causal LM (it is wrapped in place by peft).
        tokenizer: its tokenizer.
        config: the method and adapter settings.
        scoring: ``"continuation"`` or ``"letter"`` (see :mod:`scalabl.scoring`).
        length_norm: continuation scoring by mean rather than summed token log-likelihood.
        seed: seeds the adapter initialisation.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: MethodConfig | None = None,
        *,
        scoring: str = "continuation",
        length_norm: bool = False,
        seed: int = 0,
    ) -> None:
        self.config = config or MethodConfig()
        self.method = get_method(self.config)
        self.tokenizer = tokenizer
        self.scorer = Scorer(tokenizer, scoring, length_norm=length_norm)
        torch.manual_seed(seed)
        self.model = self.method.wrap(model)
        self.model.eval()
        self.history: list[dict[str, Any]] = []

    @property
    def extra_parameters(self) -> int:
        """Parameters beyond plain LoRA with the same rank and target modules."""
        return self.method.extra_parameters(self.model)

    @property
    def lora_parameters(self) -> int:
        """Parameters of the plain LoRA adapter with the same rank and targets (A and B)."""
        adapter = sum(p.numel() for n, p in self.model.named_parameters() if "lora_" in n)
        return adapter - self.extra_parameters

    def fit(
        self,
        train: Sequence[Example],
        config: TrainConfig | None = None,
        *,
        progress: bool = True,
        on_log: Callable[[dict[str, Any]], None] | None = None,
        **overrides: Any,
    ) -> list[dict[str, Any]]:
        """Train the adapter; keyword overrides (``steps=200``) replace fields of ``config``.

        ``on_log`` receives each logged record (step, nll, kl, sigma, ...) as training goes.
        """
        config = replace(config or TrainConfig(), **overrides)
        self.history = fit(self.model, self.scorer, train, config, progress=progress, on_log=on_log)
        return self.history

    def predict_log_proba(
        self,
        examples: Sequence[Example],
        n_samples: int = 10,
        *,
        batch_size: int = 8,
        seed: int = 0,
        progress: bool = False,
        batch_samples: bool = False,
    ) -> torch.Tensor:
        """Predictive log-probabilities ``[N, C_max]`` (float64); ``n_samples=0`` = posterior mean.

        Deterministic methods ignore ``n_samples`` and run one pass. ``batch_samples=True`` runs
        the S samples as one forward of S x batch sequences (see :func:`scalabl.predict.predict_log_proba`).
        """
        if n_samples < 0:
            raise ValueError(f"n_samples: must be >= 0 (0 = posterior mean), got {n_samples}")
        if not self.method.bayesian:
            n_samples = 0
        return predict_log_proba(
            self.model,
            self.scorer,
            examples,
            n_samples=n_samples,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
            batch_samples=batch_samples,
        )

    def predict_proba(self, examples: Sequence[Example], n_samples: int = 10, **kwargs: Any) -> torch.Tensor:
        """Predictive probabilities ``[N, C_max]`` (float64, rows sum to 1)."""
        return self.predict_log_proba(examples, n_samples, **kwargs).exp()

    def evaluate(self, examples: Sequence[Example], n_samples: int = 10, **kwargs: Any) -> dict[str, float]:
        """ACC, ECE, NLL and Brier on labelled examples."""
        log_probs = self.predict_log_proba(examples, n_samples, **kwargs)
        labels = torch.tensor([e.label for e in examples])
        return compute_metrics(log_probs, labels)

    # ---- persistence --------------------------------------------------------------------------
    def save(self, folder: str | Path, **metadata: Any) -> None:
        """Write the adapter (safetensors) and its config (JSON) into ``folder``, atomically."""
        folder = Path(folder)
        # An explicit state dict skips peft's check for 1-D lora_A tensors (meant to catch un-gathered
        # ZeRO-3 shards), which ScalaBL's log_mu / log_sigma vectors would trip.
        adapter = get_peft_model_state_dict(self.model, state_dict=self.model.state_dict())
        state = {k: v.detach().contiguous().cpu() for k, v in adapter.items()}
        with atomic_path(folder / ADAPTER_FILE) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "scalabl": __version__})
        write_json(
            folder / ADAPTER_CONFIG_FILE,
            {
                "scalabl_version": __version__,
                "method": self.config.to_dict(),
                "scoring": self.scorer.mode,
                "length_norm": self.scorer.length_norm,
                **metadata,
            },
        )

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
            length_norm=meta.get("length_norm", False),
        )
        state = load_file(str(folder / ADAPTER_FILE))
        result = set_peft_model_state_dict(blora.model, state)
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing:
            raise ValueError(
                f"{folder / ADAPTER_FILE}: adapter is missing {len(missing)} tensors, e.g. {missing[0]}"
            )
        blora.model.eval()
        return blora
