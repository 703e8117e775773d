"""``scalabl active``: pool-based active learning with a Bayesian adapter (its parser and command;
:mod:`scalabl.cli` adds it). The loop is :mod:`scalabl.active`."""

from __future__ import annotations

import argparse
from pathlib import Path

from scalabl.config import MethodConfig, RunConfig, TrainConfig
from scalabl.config.active import ActiveConfig
from scalabl.config.flags import add_options, given, run_config

# the run options that mean something here: no --ood, --from-run, --fsdp or --eval-split; the pool
# replaces --max-train
RUN_OPTIONS = (
    "model", "dtype", "quant", "device", "gradient_checkpointing", "task", "source", "split_seed",
    "n_validation", "n_test", "max_test", "max_validation", "scoring", "length_norm", "max_length",
    "truncation", "n_samples", "eval_batch_size",
)  # fmt: skip
OVERWRITE_HELP = "start again in a folder that holds an earlier active run (its rounds are replaced)"


def cmd_active(args: argparse.Namespace) -> int:
    from scalabl.active import run_active

    run = run_config(args)
    active = ActiveConfig(**given(args, ActiveConfig))
    rounds = run_active(run, active, args.out, progress=not args.quiet, overwrite=args.overwrite)
    print(f"{'round':>5} {'labels':>6} {'acc':>6} {'nll':>6} {'ece':>6}")
    for rec in rounds:
        m = rec["metrics"]
        print(f"{rec['round']:>5} {rec['n_labels']:>6} {m['acc']:>6.3f} {m['nll']:>6.3f} {m['ece']:>6.3f}")
    print(f"\nactive-learning folder: {args.out}  (report.md, curve.png, rounds/)")
    return 0


def add_active_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "active",
        help="pool-based active learning: train, evaluate, acquire by BALD / entropy / ... in rounds",
        description="Start from a few labelled questions of the training split and in rounds label the "
        "pool's questions with the highest acquisition score (BALD from the posterior samples, max-entropy, "
        "least confidence or random), retraining and evaluating on the fixed test split each round. "
        "Run again with the same OUT and settings to continue an interrupted run.",
    )
    p.add_argument("out", type=Path, help="the active-learning folder (new, or one to continue)")
    add_options(p.add_argument_group("active learning"), ActiveConfig)
    add_options(p.add_argument_group("run (model, data, evaluation)"), RunConfig, RUN_OPTIONS)
    add_options(p.add_argument_group("method (adapter and posterior)"), MethodConfig)
    add_options(p.add_argument_group("training (per round)"), TrainConfig)
    p.add_argument("--config", type=Path, default=None, help="JSON run config; flags override its fields")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_active)
