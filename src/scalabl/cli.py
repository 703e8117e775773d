"""The command line: ``scalabl train | evaluate | predict | generate | serve | calibrate-decisions |
active | bench | plan | export | methods | demo``.

Each command's options are the fields of the config dataclasses (:mod:`scalabl.config`), turned into
flags by :mod:`scalabl.config.flags`. The parser needs no torch: heavy modules are imported by the
command that runs, so ``scalabl --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

from scalabl.choices import Backend
from scalabl.cli_active import add_active_command
from scalabl.cli_serving import add_serving_commands
from scalabl.config import MethodConfig, RunConfig, TrainConfig
from scalabl.config.backend import BackendConfig
from scalabl.config.flags import add_options, dest, given, given_flags, run_config
from scalabl.config.generate import GenerateConfig
from scalabl.plan import PlanConfig, plan_for

EVALUATE_OPTIONS = ("n_samples", "max_test", "ood", "sample_modules")
OVERWRITE_HELP = "write into a folder that already holds files: replace only the files this command writes"


def cmd_train(args: argparse.Namespace) -> int:
    from scalabl import distributed
    from scalabl.runs import resume_run, train_run
    from scalabl.tables import run_table

    if args.resume is not None:
        extra = [
            flag
            for flag, d in (("--config", "config"), ("--out", "out"), ("--overwrite", "overwrite"))
            if getattr(args, d)
        ]
        flags = given_flags(args, RunConfig, MethodConfig, TrainConfig, GenerateConfig) + extra
        if flags:
            raise ValueError(f"--resume continues the run with its own config.json; drop {', '.join(flags)}")
        metrics = resume_run(args.resume, progress=not args.quiet)
        print(run_table(metrics["method"], metrics))
        print(f"\nrun folder: {args.resume}")
        return 0
    config = run_config(args)
    out = args.out or Path("runs") / f"{config.method.method}-{config.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        metrics = train_run(config, out, progress=not args.quiet, overwrite=args.overwrite)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; continue from the last checkpoint with: scalabl train --resume {out}",
            file=sys.stderr,
        )
        return 130
    if distributed.is_main():  # every process of a data-parallel run has the same table
        print(run_table(config.method.method, metrics))
        print(f"\nrun folder: {out}  (report.md, metrics.json, adapter.safetensors, reliability.png)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from scalabl.runs import evaluate_run
    from scalabl.tables import ood_section, run_table

    metrics = evaluate_run(
        args.run_dir,
        progress=not args.quiet,
        generate=given(args, GenerateConfig),
        **given(args, RunConfig, EVALUATE_OPTIONS),
    )
    print(run_table(metrics["method"], metrics))
    print("\n".join(ood_section({metrics["method"]: metrics})))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from scalabl.export import export_peft
    from scalabl.runs import load_run

    if args.out.resolve() == args.run_dir.resolve():
        raise ValueError(f"export: OUT {args.out} is the run folder itself; choose another folder")
    config, blora = load_run(args.run_dir)
    posterior = args.run_dir if args.with_posterior else None
    for note in export_peft(
        blora,
        args.out,
        base_model=config.model,
        member=args.member,
        overwrite=args.overwrite,
        posterior_from=posterior,
    ):
        print(f"note: {note}")
    print(
        f"peft adapter written to {args.out} (load with PeftModel.from_pretrained(base_model, '{args.out}'))"
    )
    if posterior is not None:
        print(f"whole posterior and model card written too (load with scalabl.from_pretrained('{args.out}'))")
    return 0


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N (the --shard option of a bench grid)."""
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N (e.g. 0/2), got {text!r}")
    return int(index), int(count)


def cmd_bench(args: argparse.Namespace) -> int:
    from scalabl.bench import BenchConfig, archive_cells, collect, run_bench, write_tables

    backend = BackendConfig(**given(args, BackendConfig))
    if backend.backend == Backend.RAY and (args.share or args.shard):
        raise ValueError(
            "backend: Ray schedules the cells itself; --share and --shard are for --backend local"
        )
    bench = BenchConfig.from_file(args.config)
    if args.out:
        bench.out = str(args.out)
    failed = []
    for config in bench.grids(args.models):
        if args.tables_only:
            with config.output(overwrite=args.overwrite):
                write_tables(config, collect(config))
        elif backend.backend == Backend.RAY:
            from scalabl.bench_ray import run_bench_ray

            _, failures = run_bench_ray(
                config, backend, progress=not args.quiet, overwrite=args.overwrite, methods=args.methods
            )
            failed.extend(failures)
        else:
            run_bench(
                config,
                progress=not args.quiet,
                shard=args.shard,
                share=args.share,
                overwrite=args.overwrite,
                methods=args.methods,
            )
        print((Path(config.out) / "summary.md").read_text())
        if args.archive:
            print(f"archived {archive_cells(config)} finished cells in {config.archive}")
    for failure in failed:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if failed else 0


def cmd_plan(args: argparse.Namespace) -> int:
    plan = plan_for(PlanConfig(**given(args, PlanConfig)))
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

    run_demo(Path(args.out), quick=args.quick, progress=not args.quiet, overwrite=args.overwrite)
    return 0


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one method and evaluate it on the test split",
        description="Train a LoRA adapter with the chosen method, evaluate it with S posterior samples, "
        "and write a run folder (config, adapter, metrics.json, report.md, reliability.png).",
    )
    add_options(p.add_argument_group("run (model, data, evaluation)"), RunConfig)
    add_options(p.add_argument_group("method (adapter and posterior)"), MethodConfig)
    add_options(p.add_argument_group("training"), TrainConfig)
    add_options(p.add_argument_group("generation (open QA tasks)"), GenerateConfig)
    p.add_argument("--config", type=Path, default=None, help="JSON run config; flags override its fields")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/METHOD-TASK-TIME)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint (with its own config)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


def _bench_parser(sub: argparse._SubParsersAction) -> None:
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
        "--models",
        type=lambda text: [m.strip() for m in text.split(",") if m.strip()],
        default=None,
        metavar="A,B",
        help="a bench config with 'models': run only these (default: every model, one after another)",
    )
    p.add_argument(
        "--methods",
        type=lambda text: [m.strip() for m in text.split(",") if m.strip()],
        default=None,
        metavar="A,B",
        help="run only the cells of these methods and of the post-hoc ones started from them (the "
        "tables still show every finished cell): the grid's most wanted part first",
    )
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
    p.add_argument("--overwrite", action="store_true", help="use an output folder that holds other files too")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_options(p.add_argument_group("backend (where the cells run)"), BackendConfig)
    p.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scalabl",
        description="Fine-tune LLMs with Bayesian LoRA adapters (ScalaBL and baselines) and report calibration.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)

    p = sub.add_parser(
        "evaluate",
        help="re-evaluate a trained run folder",
        description="Load a run folder's adapter and evaluate it on its test split; rewrites metrics and report.",
    )
    p.add_argument("run_dir", type=Path, help="a folder written by 'scalabl train'")
    add_options(p, RunConfig, EVALUATE_OPTIONS, default="the run's own")
    add_options(p.add_argument_group("generation (open QA runs)"), GenerateConfig, default="the run's own")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    add_serving_commands(sub)
    add_active_command(sub)

    _bench_parser(sub)

    p = sub.add_parser(
        "plan",
        help="sizes and memory of a run, from the model's config alone (no weights)",
        description="Build the model on the meta device and print base, LoRA and the method's extra parameters "
        "and an estimate of training and inference memory on one device (see scalabl.plan for the model).",
    )
    add_options(p, PlanConfig)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "export",
        help="write a run's posterior-mean adapter as a standard peft LoRA adapter",
        description="Export the posterior-mean adapter of a run folder in peft's format "
        "(adapter_model.safetensors + adapter_config.json), readable by PeftModel.from_pretrained.",
    )
    p.add_argument("run_dir", type=Path, help="a folder written by 'scalabl train'")
    p.add_argument("out", type=Path, help="output folder (new or empty, unless --overwrite)")
    p.add_argument("--member", type=int, default=None, help="ensemble: which member to export")
    p.add_argument(
        "--with-posterior",
        action="store_true",
        help="also write the whole posterior (OUT/posterior) and a model card (OUT/README.md): a folder "
        "to push to the hub, read back by scalabl.from_pretrained",
    )
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
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
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def _no_kernels_notice(record: logging.LogRecord) -> bool:
    return "kernels-community" not in record.getMessage()


def quiet_upstream_noise(args: argparse.Namespace) -> None:
    """Silence two known messages of dependencies that say nothing about a scalabl run (``-v`` keeps them)."""
    if args.verbose:
        return
    # peft reads transformers' deprecated `is_gradient_checkpointing` in get_peft_model, on every run
    # (peft 0.21 / transformers 5.x); nothing for a user to change.
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )
    if getattr(args, dest(RunConfig, "quant"), None) is None:
        # peft imports bitsandbytes whenever it is installed; bitsandbytes then warns at import about an
        # optional CPU kernel package, which only matters for a quantised base (--quant); offline, the
        # kernels package says it skips that package's trust check.
        for name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
            logger = logging.getLogger(name)
            if _no_kernels_notice not in logger.filters:
                logger.addFilter(_no_kernels_notice)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    quiet_upstream_noise(args)
    from scalabl import distributed  # torch: after parsing, so that --help answers at once

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


__all__ = ["build_parser", "main", "parse_shard", "run_config"]
