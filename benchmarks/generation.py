"""Uncertainty of free-form answers (issue 22): mle, scalabl, ensemble, mcdropout and blob fine-tuned
on (question, answer) pairs of two open QA tasks with the embedded SmolLM2-135M-Instruct, 3 seeds,
the 300 test questions of each task; every test question gets the posterior-mean answer plus S = 5
answers (one per posterior sample; the ensemble: its 3 members; mle: none, its scores are one
model's), graded by normalised exact match, and every uncertainty score is judged by AUROC (wrong vs
right) and PRR.

Tasks: SciQ (with its support paragraph) and SQuAD v1.1 (reading comprehension), the two offline
tasks where the fine-tuned model is right on 20-80% of the questions (TriviaQA and Natural
Questions, closed-book, are right on under 10%: see docs/generation.md).

One ``scalabl bench`` grid: cells keyed by a hash of their config under ``runs/generation``,
archived (results and generations, no weights) in ``benchmarks/results/generation``, so the grid
continues where the last machine stopped. The first seed of every method runs first:

    OMP_NUM_THREADS=1 python benchmarks/generation.py run --share     # twice: two processes share it
    python benchmarks/generation.py report                            # tables of the finished cells

``report`` writes benchmarks/results/generation.{md,json}.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scalabl.bench import BenchConfig, archive_cells, collect, run_bench
from scalabl.generation_tables import generation_summary
from scalabl.io import write_json, write_text
from scalabl.run_generation import read_generations
from scalabl.tables import mean_std
from scalabl.uncertainty import SCORES

RESULTS = Path(__file__).parent / "results"
ARCHIVE = RESULTS / "generation"
TASKS = ["sciq", "squad"]
SEEDS = [0, 1, 2]
METHODS = ["mle", "scalabl", "ensemble", "mcdropout", "blob"]
BASE: dict[str, Any] = {
    "max_test": 300,
    "n_samples": [5],
    "method": {"rank": 8},
    "train": {"steps": 40, "batch_size": 4, "lr": 2e-3, "val_size": 0, "checkpoint_every": 0},
    "generate": {"n_samples": 5, "max_new_tokens": 16, "batch_size": 16},
}


def grid(seeds: list[int] | None = None, tasks: list[str] | None = None) -> BenchConfig:
    return BenchConfig(
        tasks=tasks or TASKS,
        methods={m: {"method": {"method": m}} for m in METHODS},
        seeds=seeds or SEEDS,
        base=BASE,
        out="runs/generation",
        archive=str(ARCHIVE),
        reference="mle",
    )


def run(args: argparse.Namespace) -> None:
    # the first seed of every method on each task, then the others: a partial grid compares all methods
    for tasks, seeds in [([task], SEEDS[:1]) for task in TASKS] + [(TASKS, SEEDS)]:
        run_bench(grid(seeds, tasks), progress=True, share=args.share, methods=args.methods)
        archive_cells(grid(seeds, tasks))


def _posterior_beats_single(results: dict[str, Any]) -> list[str]:
    """Per method and task: each posterior score's AUROC minus the single model's (msp_single), paired
    by seed."""
    lines = [
        "| method | task | score | AUROC − msp_single's | PRR − msp_single's | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for label, per in results.items():
        for task, runs in per.items():
            for score in SCORES:
                if score == "msp_single":
                    continue
                d_auc, d_prr = [], []
                for m in runs.values():
                    s = m["generation"]["scores"]
                    if score in s:
                        d_auc.append(s[score]["auroc"] - s["msp_single"]["auroc"])
                        d_prr.append(s[score]["prr"] - s["msp_single"]["prr"])
                if d_auc:
                    (a, sa), (p, sp) = mean_std(d_auc), mean_std(d_prr)
                    spread = len(d_auc) > 1
                    auc = f"{a:+.3f}" + (f" ± {sa:.3f}" if spread else "")
                    prr = f"{p:+.3f}" + (f" ± {sp:.3f}" if spread else "")
                    lines.append(f"| {label} | {task} | {score} | {auc} | {prr} | {len(d_auc)} |")
    return lines


def _agreement(config: BenchConfig, results: dict[str, Any], task: str) -> list[str]:
    """How often every sample gave one answer: the diversity scores are ties there."""
    lines = []
    for label, per in results.items():
        for seed in per.get(task, {}):
            records = read_generations(config.finished_dir(label, task, seed))
            if records and records[0]["samples"]:
                one = sum(r["scores"]["distinct_answers"] == 1 for r in records)
                lines.append(
                    f"- {label}, seed {seed}: all samples gave one answer on {one} of {len(records)} questions"
                )
    return [*lines, ""] if lines else []


def report(_: argparse.Namespace) -> None:
    config = grid()
    results = collect(config)
    n_cells = sum(len(r) for per in results.values() for r in per.values())
    lines = [
        "# Uncertainty of free-form answers",
        "",
        f"Embedded SmolLM2-135M-Instruct, {BASE['train']['steps']} training steps (batch "
        f"{BASE['train']['batch_size']}, lr {BASE['train']['lr']}, rank {BASE['method']['rank']}), "
        f"{BASE['max_test']} test questions per task, S = {BASE['generate']['n_samples']} answers beside "
        f"the posterior-mean one; {n_cells} of {len(TASKS) * len(METHODS) * len(SEEDS)} cells finished. "
        "Produced by `python benchmarks/generation.py report` (cells: `run --share`).",
        "",
    ]
    for task in TASKS:
        lines += generation_summary({m: results.get(m, {}).get(task, {}) for m in METHODS}, task)
        lines += _agreement(config, results, task)
    lines += [
        "## Where the posterior's scores beat one model's sequence probability",
        "",
        "Each score's AUROC and PRR minus those of `msp_single` (the answer's probability under the "
        "posterior mean alone, what a plain fine-tuned model has) in the same cell, mean ± std over seeds.",
        "",
        *_posterior_beats_single(results),
        "",
    ]
    write_text(RESULTS / "generation.md", "\n".join(lines))
    write_json(RESULTS / "generation.json", {"base": BASE, "results": results})
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the missing cells")
    p.add_argument("--share", action="store_true", help="share the grid with other processes")
    p.add_argument("--methods", type=lambda t: t.split(","), default=None, help="only these methods")
    p.set_defaults(func=run)
    p = sub.add_parser("report", help="tables of the finished cells")
    p.set_defaults(func=report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
