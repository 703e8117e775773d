"""The commands that put a trained run to work: ``scalabl predict``, ``generate``, ``serve`` and
``calibrate-decisions`` (their parsers and implementations; :mod:`scalabl.cli` adds them)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scalabl.config import PredictConfig
from scalabl.config.decisions import DecisionConfig
from scalabl.config.flags import add_options, given
from scalabl.config.generate import GenerateConfig
from scalabl.config.serve import ServeConfig

PREDICT_OPTIONS = ("n_samples", "batch_size", "batch_samples", "seed")
SERVE_PREDICT_OPTIONS = ("n_samples", "batch_samples", "seed")


def _written(total: int, answered: int, output: Path) -> str:
    """What a resumable output says when it is complete."""
    resumed = total - answered
    return f"{total} answers written to {output}" + (
        f" ({resumed} from the interrupted run resumed)" if resumed else ""
    )


def cmd_predict(args: argparse.Namespace) -> int:
    from scalabl.answers import load_answerer, write_answers
    from scalabl.data import load_jsonl
    from scalabl.resumable import input_digest

    examples = load_jsonl(args.input, require_answer=False)  # bad rows fail before the model loads
    answerer, warnings = load_answerer(args.run_dir, **given(args, PredictConfig, PREDICT_OPTIONS))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    provenance = {
        "run": str(args.run_dir.resolve()),
        "input": input_digest(args.input),
        "n_samples": answerer.config.n_samples,
        "seed": answerer.config.seed,
        "temperature": answerer.blora.temperature,
        "decisions": answerer.decisions.to_dict() if answerer.decisions else None,
    }
    answered = write_answers(
        answerer,
        examples,
        args.output,
        provenance=provenance,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(
        _written(len(examples), answered, args.output)
        + (
            ""
            if answerer.decisions
            else "; no decision rules yet: run 'scalabl calibrate-decisions' for them"
        )
    )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from scalabl.qa import load_qa_jsonl
    from scalabl.resumable import input_digest
    from scalabl.run_generation import write_generations
    from scalabl.runs import load_run

    examples = load_qa_jsonl(args.input, require_answers=False)  # bad rows fail before the model loads
    run, blora = load_run(args.run_dir)
    if not run.open_qa:
        raise ValueError(
            f"generate: {args.run_dir} was trained on the multiple-choice task {run.task!r}; "
            "answer its questions with 'scalabl predict'"
        )
    config = replace(run.generate, **given(args, GenerateConfig))
    provenance = {
        "run": str(args.run_dir.resolve()),
        "input": input_digest(args.input),
        "generate": config.to_dict(),
    }
    answered = write_generations(
        blora,
        examples,
        config,
        args.output,
        provenance=provenance,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(_written(len(examples), answered, args.output))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from scalabl.serve import api_key, serve
    except ImportError as err:
        raise ImportError(f"scalabl serve needs its extra: pip install 'scalabl[serve]' ({err})") from err
    from scalabl.answers import load_answerer
    from scalabl.config.serve import ServeConfig

    config = ServeConfig(**given(args, ServeConfig))
    api_key(config)  # no key and no --no-auth: refuse before the model loads
    answerer, warnings = load_answerer(
        args.run_dir, **{"batch_size": config.max_batch, **given(args, PredictConfig, SERVE_PREDICT_OPTIONS)}
    )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"serving {args.run_dir} on http://{config.host}:{config.port} (POST /v1/predict, GET /healthz, GET /metrics)"
    )
    sys.stdout.flush()
    serve(answerer, config, run=str(args.run_dir))
    return 0


def cmd_calibrate_decisions(args: argparse.Namespace) -> int:
    from scalabl.report import write_run_report
    from scalabl.run_decisions import fit_run_decisions
    from scalabl.run_folder import RunFolder
    from scalabl.runs import load_run
    from scalabl.tables import decisions_table

    config, blora = load_run(args.run_dir)
    folder = RunFolder(args.run_dir)
    scored = fit_run_decisions(
        folder, config, blora, DecisionConfig(**given(args, DecisionConfig)), progress=not args.quiet
    )
    write_run_report(folder.path)
    print(decisions_table(scored) if scored else "fitted; no test predictions at that S to score them on")
    print(f"\ndecision rules written to {folder / 'decisions.json'}")
    return 0


def add_serving_commands(sub: argparse._SubParsersAction) -> None:
    """Add predict, generate, serve and calibrate-decisions to the ``scalabl`` parser."""
    p = sub.add_parser(
        "predict",
        help="answer new questions from a JSONL file with a trained run",
        description="One output line per question: the probabilities per choice (the Bayesian model average "
        "over S posterior samples), the chosen answer and its confidence, the predictive entropy and its "
        "epistemic part (mutual information), and the run's decisions (conformal sets, answer or abstain). "
        "An interrupted run resumes where it stopped; the output appears only when complete.",
    )
    p.add_argument("run_dir", type=Path, help="a folder written by 'scalabl train'")
    p.add_argument(
        "--input", type=Path, required=True, help="JSONL of questions, as for training; 'answer' optional"
    )
    p.add_argument("--output", type=Path, required=True, help="JSONL of answers, one line per question")
    add_options(p, PredictConfig, PREDICT_OPTIONS, default="the run's own")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a finished output, or a partial one of other settings",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "generate",
        help="answer open questions from a JSONL file with a run trained on an open QA task",
        description="One output line per question: the posterior-mean answer, one answer per posterior "
        "sample, and the uncertainty scores (sequence probability under the posterior average and under "
        "the mean model, predictive and semantic entropy, lexical similarity, distinct answers, mutual "
        "information); with references, whether the answer is right. An interrupted run resumes where it "
        "stopped; the output appears only when complete.",
    )
    p.add_argument("run_dir", type=Path, help="a folder written by 'scalabl train' on an open QA task")
    p.add_argument(
        "--input",
        type=Path,
        required=True,
        help="JSONL of {question, context?, id?, answers?} (answers: references, optional)",
    )
    p.add_argument("--output", type=Path, required=True, help="JSONL of answers, one line per question")
    add_options(p, GenerateConfig, default="the run's own")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a finished output, or a partial one of other settings",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "serve",
        help="serve a trained run over HTTP (pip install 'scalabl[serve]')",
        description="A FastAPI server: POST /v1/predict answers one question or a batch as 'scalabl predict' "
        "does, GET /healthz, GET /metrics (Prometheus). Requests are micro-batched by one model worker; a full "
        "queue answers 503. An API key (Authorization: Bearer KEY, from $SCALABL_API_KEY or --api-key-file) "
        "is required unless --no-auth on loopback.",
    )
    p.add_argument("run_dir", type=Path, help="a folder written by 'scalabl train'")
    add_options(p, ServeConfig)
    add_options(p, PredictConfig, SERVE_PREDICT_OPTIONS, default="the run's own")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "calibrate-decisions",
        help="fit conformal answer sets and a selective-answering rule on a run's validation split",
        description="Fit split-conformal answer sets (LAC and APS scores: P(true answer in set) >= 1 - alpha) "
        "and a confidence threshold whose error rate among answered questions is at most the target "
        "with probability >= 1 - delta, on the run's held-out validation questions; save them as "
        "decisions.json and report their coverage, set size and risk on the test split.",
    )
    p.add_argument("run_dir", type=Path, help="a folder written by 'scalabl train'")
    add_options(p, DecisionConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_calibrate_decisions)
