"""Active learning with Bayesian adapters (issue 23): does BALD from ScalaBL's posterior beat
max-entropy and random acquisition with the same method, and how does it compare with BALD from an
ensemble? Embedded SmolLM2-135M-Instruct, two tasks, 3 seeds, ``scalabl active`` with cold starts.

Every (task, arm, seed) is one ``scalabl active`` folder under ``runs/active``; a finished one is
archived (its configs, round records and curve, not the adapters) in
``benchmarks/results/active``, so the grid continues where the last machine stopped. Two
processes share it (``--share``: each takes the next unclaimed run):

    OMP_NUM_THREADS=1 python benchmarks/active.py run --share     # twice
    python benchmarks/active.py report                           # tables and curves of the finished runs

``report`` writes benchmarks/results/active.{md,json} and active_<task>.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from scalabl.active import CONFIG_FILE, ROUND_FILE, completed_rounds, run_active
from scalabl.config import MethodConfig, RunConfig, TrainConfig
from scalabl.config.active import ActiveConfig
from scalabl.io import claim, write_json, write_text
from scalabl.plots import plot_active_curves
from scalabl.tables import mean_std

RESULTS = Path(__file__).parent / "results"
ARCHIVE = RESULTS / "active"
OUT = Path("runs/active")
TASKS = ["arc_easy", "boolq"]
SEEDS = [0, 1, 2]
# arm -> (method, acquisition)
ARMS = {
    "scalabl-bald": ("scalabl", "bald"),
    "scalabl-entropy": ("scalabl", "entropy"),
    "scalabl-random": ("scalabl", "random"),
    "ensemble-bald": ("ensemble", "bald"),
}
REFERENCE = "scalabl-random"
# Sized to about 10 core-hours for the 24 runs (benchmarks/results/active.md states the measured cost)
ACTIVE = {"pool": 128, "initial": 16, "acquire": 16, "rounds": 3, "acquisition_samples": 4}
RUN = {"max_test": 100, "max_validation": 32, "n_samples": (4,)}
TRAIN = {"steps": 30, "batch_size": 4, "lr": 2e-3, "val_size": 0, "checkpoint_every": 10, "log_every": 10}


def configs(task: str, arm: str, seed: int) -> tuple[RunConfig, ActiveConfig]:
    method, acquisition = ARMS[arm]
    run = RunConfig(
        task=task,
        **RUN,
        method=MethodConfig(method=method, rank=8),
        train=TrainConfig(seed=seed, **TRAIN),
    )
    return run, ActiveConfig(acquisition=acquisition, al_seed=seed, **ACTIVE)


def runs() -> list[tuple[str, str, int]]:
    """Seed 0 of every arm on both tasks first, so that a partial grid compares all arms."""
    return [(t, a, s) for s in SEEDS for t in TASKS for a in ARMS]


def archived(task: str, arm: str, seed: int) -> Path:
    return ARCHIVE / task / arm / f"seed{seed}"


def archive(folder: Path, to: Path) -> None:
    """The run's configs, round records, curve and report; no adapters."""
    tmp = to.with_name(to.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in (CONFIG_FILE, "curve.json", "report.md"):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / name, tmp / name)
    for r in range(len(completed_rounds(folder))):
        (tmp / "rounds" / str(r)).mkdir(parents=True)
        shutil.copy2(folder / "rounds" / str(r) / ROUND_FILE, tmp / "rounds" / str(r) / ROUND_FILE)
    shutil.rmtree(to, ignore_errors=True)
    tmp.rename(to)


def run(args: argparse.Namespace) -> None:
    for task, arm, seed in runs():
        if args.arms and arm not in args.arms:
            continue
        target = archived(task, arm, seed)
        if (target / "curve.json").is_file():
            continue
        folder = OUT / task / arm / f"seed{seed}"
        with claim(OUT / ".claims" / f"{task}-{arm}-{seed}") as mine:
            if not mine and args.share:
                continue
            print(f"active: {task} {arm} seed {seed}", flush=True)
            run_active(*configs(task, arm, seed), folder, progress=False)
            archive(folder, target)
            print(f"done: {task} {arm} seed {seed}", flush=True)


def collect() -> dict[str, dict[str, dict[int, list[dict[str, Any]]]]]:
    """task -> arm -> seed -> round records, of the archived runs."""
    out: dict[str, dict[str, dict[int, list[dict[str, Any]]]]] = {}
    for task, arm, seed in runs():
        path = archived(task, arm, seed) / "curve.json"
        if path.is_file():
            out.setdefault(task, {}).setdefault(arm, {})[seed] = json.loads(path.read_text())
    return out


def _area(records: list[dict[str, Any]], key: str) -> float:
    """The metric averaged over the rounds: the area under the learning curve per round."""
    return float(np.mean([r["metrics"][key] for r in records]))


def report(_: argparse.Namespace) -> None:
    results = collect()
    total = len(TASKS) * len(ARMS) * len(SEEDS)
    done = sum(len(s) for per in results.values() for s in per.values())
    labels = [ACTIVE["initial"] + r * ACTIVE["acquire"] for r in range(ACTIVE["rounds"] + 1)]
    lines = [
        "# Active learning: BALD from the posterior against max-entropy, random and an ensemble",
        "",
        f"Embedded SmolLM2-135M-Instruct, rank 8; pool {ACTIVE['pool']} training questions, "
        f"{ACTIVE['initial']} labelled at random, {ACTIVE['rounds']} rounds of {ACTIVE['acquire']} "
        f"(labels {labels}); cold start, {TRAIN['steps']} steps of batch {TRAIN['batch_size']} per round "
        f"(lr {TRAIN['lr']}); acquisition on S = {ACTIVE['acquisition_samples']} posterior samples (the "
        f"ensemble: its 3 members); test: the first {RUN['max_test']} test questions, S = "
        f"{RUN['n_samples'][0]}. {done} of {total} runs finished. Produced by `python benchmarks/active.py "
        "report` (runs: `run --share`).",
        "",
    ]
    for task in TASKS:
        per = results.get(task, {})
        if not per:
            continue
        lines += [
            f"## {task}",
            "",
            "| arm | "
            + " | ".join(f"acc @{n}" for n in labels)
            + " | NLL @"
            + str(labels[-1])
            + " | seeds |",
        ]
        lines += ["|---|" + "---|" * (len(labels) + 2)]
        for arm in ARMS:
            seeds = per.get(arm, {})
            if not seeds:
                continue
            cells = []
            for r in range(len(labels)):
                m, s = mean_std([recs[r]["metrics"]["acc"] for recs in seeds.values() if len(recs) > r])
                cells.append(f"{m:.3f} ± {s:.3f}" if len(seeds) > 1 else f"{m:.3f}")
            nll, nll_s = mean_std([recs[-1]["metrics"]["nll"] for recs in seeds.values()])
            lines.append(f"| {arm} | " + " | ".join(cells) + f" | {nll:.3f} | {len(seeds)} |")
        lines += [
            "",
            f"Paired by seed against {REFERENCE}: mean over rounds of the accuracy and NLL (area under the "
            "learning curve per round), and the last round's.",
            "",
            "| arm | Δ mean acc | Δ mean NLL | Δ last acc | Δ last NLL | seeds |",
            "|---|---|---|---|---|---|",
        ]
        ref = per.get(REFERENCE, {})
        for arm in ARMS:
            if arm == REFERENCE:
                continue
            common = sorted(set(per.get(arm, {})) & set(ref))
            if not common:
                continue
            a, b = per[arm], ref
            diffs = {
                "mean acc": [_area(a[s], "acc") - _area(b[s], "acc") for s in common],
                "mean nll": [_area(a[s], "nll") - _area(b[s], "nll") for s in common],
                "last acc": [a[s][-1]["metrics"]["acc"] - b[s][-1]["metrics"]["acc"] for s in common],
                "last nll": [a[s][-1]["metrics"]["nll"] - b[s][-1]["metrics"]["nll"] for s in common],
            }
            shown = []
            for values in diffs.values():
                m, s = mean_std(values)
                shown.append(f"{m:+.3f}" + (f" ± {s:.3f}" if len(values) > 1 else ""))
            lines.append(f"| {arm} | " + " | ".join(shown) + f" | {len(common)} |")
        curves = {arm: list(seeds.values()) for arm, seeds in per.items()}
        plot_active_curves(
            curves, RESULTS / f"active_{task}.png", title=f"{task}: test accuracy and NLL against labels"
        )
        lines += ["", f"![{task}](active_{task}.png)", ""]
    seconds = [
        r["seconds"]
        for per in results.values()
        for seeds in per.values()
        for recs in seeds.values()
        for r in recs
    ]
    if seconds:
        lines += [
            f"Cost: {sum(seconds) / 3600:.1f} core-hours for the {done} finished runs "
            f"({np.mean(seconds) / 60:.1f} min per round, one thread, processes sharing the two cores).",
            "",
        ]
    write_text(RESULTS / "active.md", "\n".join(lines))
    write_json(RESULTS / "active.json", {"active": ACTIVE, "run": RUN, "train": TRAIN, "results": results})
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the missing active-learning runs")
    p.add_argument("--share", action="store_true", help="share the grid with other processes")
    p.add_argument("--arms", type=lambda t: t.split(","), default=None, help="only these arms")
    p.set_defaults(func=run)
    p = sub.add_parser("report", help="tables and curves of the finished runs")
    p.set_defaults(func=report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
