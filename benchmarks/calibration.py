"""Every method on ARC-Easy with the embedded model: same seed, steps, splits, adapters and metrics.

Each method is one run (:func:`scalabl.runs.train_run`) of the demo's budget: SmolLM2-135M-Instruct,
LoRA r = 8 on q_proj/v_proj, 80 steps of batch 4 at lr 2e-3, seed 0, continuation scoring; evaluated
on the first ``--max-test`` test questions with S = ``--samples`` posterior samples and the
posterior mean. ScalaBL uses the demo's recipe (elbo, correct KL, variational lr 2e-2); BLoB the
elbo recipe at the common lr (BLoB's own two-optimiser recipe is a no-op at this length, see
docs/method.md). The post-hoc methods (tfb, laplace, temperature) start from the mle run's adapter
(``--from-run``), so their training time is the mle run's plus their own post-hoc fit; they fit
on the first ``--max-validation`` validation questions (laplace: on ``laplace_max_train`` training
questions).

A finished method (metrics.json present) is not run again: stop and restart at will. ``--only``
runs a subset, so two processes can share the machine (``--threads 1`` each; run ``mle`` first,
the post-hoc methods need it).

    python benchmarks/calibration.py --runs runs/calibration [--only mle,map] [--threads 1]

Writes benchmarks/results/calibration.md and .json, and calibration_reliability.png.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from scalabl.demo import DEMO_RUN, DEMO_TRAIN
from scalabl.io import write_json, write_text
from scalabl.methods import METHODS, MethodConfig
from scalabl.plots import plot_reliability
from scalabl.results import evaluations
from scalabl.run_folder import RunFolder
from scalabl.runs import train_run
from scalabl.tables import comparison_table

RESULTS = Path(__file__).parent / "results"
POST_HOC = ("tfb", "laplace", "temperature")
# Per-method settings beyond the shared ones; everything else is the demo's configuration.
METHOD_SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "mle": ({}, {}),
    "map": ({}, {}),
    "mcdropout": ({}, {}),
    "ensemble": ({"ensemble_size": 3}, {}),
    "blob": ({}, {"recipe": "elbo"}),
    "scalabl": ({}, {"recipe": "elbo", "variational_lr": 2e-2}),
    "tfb": ({"tfb_samples": 2, "tfb_search_steps": 4}, {}),
    "laplace": ({}, {}),
    "temperature": ({}, {}),
}


def method_run(name: str, args: argparse.Namespace):
    method_kw, train_kw = METHOD_SETTINGS[name]
    return replace(
        DEMO_RUN,
        max_test=args.max_test,
        max_validation=args.max_validation,
        n_samples=(args.samples, 0),
        from_run=str(args.runs / "mle") if name in POST_HOC else None,
        method=MethodConfig(method=name, **method_kw),
        train=replace(DEMO_TRAIN, **train_kw),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/calibration"), help="run folders")
    parser.add_argument("--only", default=None, help="comma-separated methods to run (default: all)")
    parser.add_argument("--max-test", type=int, default=200)
    parser.add_argument("--max-validation", type=int, default=100)
    parser.add_argument("--samples", type=int, default=5, help="posterior samples S (and S = 0)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in METHOD_SETTINGS if n in METHODS]
    todo = args.only.split(",") if args.only else names
    unknown = sorted(set(todo) - set(names))
    if unknown:
        raise SystemExit(f"--only: unknown method(s) {unknown}; allowed: {', '.join(names)}")

    for name in todo:
        if (args.runs / name / "metrics.json").is_file():
            continue
        if name in POST_HOC and not (args.runs / "mle" / "metrics.json").is_file():
            raise SystemExit(f"{name} starts from the mle run: run --only mle first")
        print(f"== {name}", flush=True)
        # an unfinished run of this script is replaced; a finished one was skipped above
        train_run(method_run(name, args), args.runs / name, progress=False, overwrite=True)

    done = {
        n: json.loads((args.runs / n / "metrics.json").read_text())
        for n in names
        if (args.runs / n / "metrics.json").is_file()
    }
    if not done:
        return
    mle_train = done.get("mle", {}).get("train_seconds", 0.0)
    for name in POST_HOC:  # count the training they start from
        if name in done:
            done[name]["train_seconds"] = done[name]["train_seconds"] + mle_train
    write_json(RESULTS / "calibration.json", done)
    table = comparison_table(done)
    first = next(iter(done.values()))
    curves = {
        f"{n} S={s}": RunFolder(args.runs / n).predictions(s)
        for n, m in done.items()
        for s, _ in evaluations(m["eval"])
        if s != 0 or len(m["eval"]) == 1
    }
    plot_reliability(curves, RESULTS / "calibration_reliability.png", title="ARC-Easy test, every method")
    fitted = [
        f"- {n}: "
        + ", ".join(f"{k} = {v:.4g}" for k, v in m.get("fitted", {}).items() if isinstance(v, int | float))
        for n, m in done.items()
        if any(isinstance(v, int | float) for v in m.get("fitted", {}).values())
    ]
    text = "\n".join(
        [
            "# Every method on ARC-Easy (embedded SmolLM2-135M-Instruct)",
            "",
            f"`python benchmarks/calibration.py --runs {args.runs}` (settings in the script's docstring): "
            f"{first['n_train']} training questions, {DEMO_TRAIN.steps} steps of batch {DEMO_TRAIN.batch_size}, "
            f"lr {DEMO_TRAIN.lr:g}, seed {DEMO_TRAIN.seed}, LoRA r = 8 on q_proj/v_proj, test n = {first['n_test']}, "
            f"post-hoc fits on {args.max_validation} validation questions. S = posterior samples "
            "(0 = posterior mean; an ensemble's S is its K members). Train (s) includes post-hoc fitting, "
            "and for tfb, laplace and temperature the mle run they start from. One seed: differences of a "
            "few ECE points are within noise (issue 5 runs 3 seeds).",
            "",
            table,
            "",
            *(["Fitted post hoc:", *fitted, ""] if fitted else []),
            "![reliability](calibration_reliability.png)",
            "",
        ]
    )
    write_text(RESULTS / "calibration.md", text)
    print(text)


if __name__ == "__main__":
    main()
