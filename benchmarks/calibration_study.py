"""Calibration study (issue 8): which of ScalaBL's settings make the subspace posterior calibrate.

One ``scalabl bench`` grid on ARC-Easy with the embedded SmolLM2-135M-Instruct. Every ScalaBL
setting is the reference setting with one change; settings are grouped by the lever they move:

- posterior levers (sigma init, prior std, KL weight, KL direction, training recipe) share one
  budget, so one plain-LoRA (``mle``) and one temperature-scaled ``mle`` column serve them all;
- budget levers (scoring, adapted modules, steps, data size) change what plain LoRA sees too, so
  each gets its own ``mle`` and ``temperature`` cells with the same change.

Every cell runs the same seeds (3), the same splits (the offline ARC-Easy pool: 2,246 train,
200 validation, 500 test questions; see docs/data.md), the first ``max_test`` test questions and
``n_samples`` posterior samples. Cells are keyed by a hash of their config, kept under
``runs/calibration-study`` and archived (results only) in ``benchmarks/results/calibration_study``,
so the grid continues where the last machine stopped:

    python benchmarks/calibration_study.py run [--share]        # start it twice: two processes share the grid
                                                                # (a 1-seed screen first, see phases())
    python benchmarks/calibration_study.py report               # tables, sigma plot (finished cells)
    python benchmarks/calibration_study.py target [--share] [--tasks arc_challenge] [--full-test]
                                                                # the defaults vs mle on ARC-E, ARC-C

``report`` writes benchmarks/results/calibration_study.{md,json}, calibration_study_sigma.png and
calibration_target.{md,json} (100 questions) and calibration_target_full.{md,json} (the
whole test split, after ``target --full-test``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from scalabl.bench import BenchConfig, collect, run_bench
from scalabl.cli import parse_shard
from scalabl.io import write_json, write_text
from scalabl.metrics import ece_floor
from scalabl.plots import plot_training_curves
from scalabl.results import entry, headline
from scalabl.run_folder import RunFolder
from scalabl.tables import mean_std

RESULTS = Path(__file__).parent / "results"
ARCHIVE = RESULTS / "calibration_study"
SEEDS = [0, 1, 2]
BASE: dict[str, Any] = {
    "length_norm": "none",  # the cells were run with summed scores, the default then
    "max_test": 100,
    "max_validation": 100,  # temperature is fitted on these validation questions
    "n_samples": [4],
    "method": {"rank": 8},
    "train": {"steps": 80, "batch_size": 4, "lr": 2e-3, "checkpoint_every": 0},
}
# The reference ScalaBL setting (the demo's before this study), spelled out so that a later change of
# the library's defaults does not move these cells.
REFERENCE = {
    "method": {"method": "scalabl", "sigma_init": 0.05, "prior_std": 1.0, "kl_direction": "correct"},
    "train": {"recipe": "elbo", "variational_lr": 0.02, "kl_weight": 1.0},
}

# lever -> [(setting, change to the reference)]; a change under "budget" also applies to mle.
POSTERIOR_LEVERS: dict[str, list[tuple[str, dict[str, dict[str, Any]]]]] = {
    "reference": [("scalabl", {})],
    "sigma init": [
        ("sigma_init-0.5", {"method": {"sigma_init": 0.5}}),
        ("sigma_init-0.2", {"method": {"sigma_init": 0.2}}),
        ("sigma_init-2.0", {"method": {"sigma_init": 2.0}}),
    ],
    # the library's default before this study: the posterior learns at the main learning rate
    "variational lr": [("variational_lr-0.002", {"train": {"variational_lr": 0.002}})],
    "KL weight": [("kl_weight-100", {"train": {"kl_weight": 100.0}})],
    "recipe": [
        ("blob_recipe-reference_kl", {"train": {"recipe": "blob"}, "method": {"kl_direction": "reference"}}),
        ("blob_recipe", {"train": {"recipe": "blob"}}),
    ],
    "KL direction": [("kl-reference", {"method": {"kl_direction": "reference"}})],
    "prior std": [("prior_std-0.2", {"method": {"prior_std": 0.2}})],
}
BUDGET_LEVERS: dict[str, list[tuple[str, dict[str, dict[str, Any]]]]] = {
    "adapted modules": [
        ("lm_head", {"method": {"target_modules": ["q_proj", "v_proj", "lm_head"]}}),
        (
            "all_linear",
            {
                "method": {
                    "target_modules": [
                        "q_proj",
                        "k_proj",
                        "v_proj",
                        "o_proj",
                        "gate_proj",
                        "up_proj",
                        "down_proj",
                    ]
                }
            },
        ),
    ],
    "scoring": [
        ("length_norm", {"run": {"length_norm": "tokens"}}),
        ("letter", {"run": {"scoring": "letter"}}),
    ],
    "steps and data": [
        ("steps-160", {"train": {"steps": 160}}),
        ("max_train-200", {"run": {"max_train": 200}}),
    ],
    # MLE's overconfidence after many epochs on little data is where a posterior should pay (the
    # papers train for thousands of steps on a few hundred questions).
    "overfitting (100 questions, 8 epochs)": [
        ("overfit", {"run": {"max_train": 100}, "train": {"steps": 200}}),
    ],
}
# Posterior settings also run on a budget lever's budget: label scalabl-BUDGET+SETTING.
BUDGET_VARIANTS: dict[str, list[str]] = {
    "length_norm": ["sigma_init-0.5"],
    "overfit": ["sigma_init-0.5", "blob_recipe-reference_kl"],
}
# Run order within a seed: the levers most likely to matter first, so a partial grid says most.
ORDER = [
    "scalabl",
    "sigma_init-0.5",
    "kl_weight-100",
    "blob_recipe-reference_kl",
    "kl-reference",
    "lm_head",
    "length_norm",
    "sigma_init-0.2",
    "prior_std-0.2",
    "blob_recipe",
    "letter",
    "all_linear",
    "steps-160",
    "max_train-200",
    "sigma_init-2.0",
    "variational_lr-0.002",
    "overfit",
]
# Settings whose other seeds run before the rest of the grid's (the screen's most informative).
KEY = ["mle", "temperature", "scalabl", "sigma_init-0.5", "length_norm", "variational_lr-0.002"]  # fmt: skip


def _merge(*specs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        for part, values in spec.items():
            out[part] = {**out.get(part, {}), **values}
    return out


def study_methods() -> dict[str, dict[str, Any]]:
    """The bench's methods: every ScalaBL setting, and mle + temperature for every budget."""
    settings = {
        name: change
        for levers in (POSTERIOR_LEVERS, BUDGET_LEVERS)
        for v in levers.values()
        for name, change in v
    }
    budgets = {name for v in BUDGET_LEVERS.values() for name, _ in v}
    methods: dict[str, dict[str, Any]] = {"mle": {}, "temperature": {"from": "mle"}}
    for name in ORDER:
        change = settings[name]
        if name in budgets:
            methods[f"mle-{name}"] = _merge({"method": {"method": "mle"}}, change)
            methods[f"temperature-{name}"] = _merge({"method": {"method": "temperature"}}, change)
            methods[f"temperature-{name}"]["from"] = f"mle-{name}"
            methods[f"scalabl-{name}"] = _merge(REFERENCE, change)
            for variant in BUDGET_VARIANTS.get(name, []):
                methods[f"scalabl-{name}+{variant}"] = _merge(REFERENCE, settings[variant], change)
        else:
            methods[name] = _merge(REFERENCE, change)
    return methods


def study_config(labels: list[str] | None = None, seeds: list[int] | None = None) -> BenchConfig:
    """The whole grid, or the cells of some of its methods (with their sources) and seeds."""
    methods = study_methods()
    if labels is not None:
        keep = set(labels) | {methods[lab]["from"] for lab in labels if methods[lab].get("from")}
        methods = {lab: spec for lab, spec in methods.items() if lab in keep}
    return BenchConfig(
        tasks=["arc_easy"],
        methods=methods,
        seeds=seeds or SEEDS,
        base=BASE,
        out="runs/calibration-study",
        archive=str(ARCHIVE),
    )


def phases() -> list[BenchConfig]:
    """The grid in the order it runs: a one-seed screen of every setting, the other seeds of the
    key settings (with their mle and temperature), the overfitting regime on every seed, then the
    other seeds of the rest. The phases hold disjoint cells, so processes on different phases never
    run the same cell."""
    labels = list(study_methods())
    overfit = [lab for lab in labels if "overfit" in lab]
    key = [lab for lab in labels if lab in KEY or any(lab.endswith(f"-{k}") or f"-{k}+" in lab for k in KEY)]
    screen = [lab for lab in labels if lab not in overfit]
    rest = [lab for lab in screen if lab not in key]
    return [
        study_config(screen, [SEEDS[0]]),
        study_config(key, SEEDS[1:]),
        study_config(overfit, SEEDS),
        study_config(rest, SEEDS[1:]),
    ]


def target_config(
    tasks: tuple[str, ...] = ("arc_easy", "arc_challenge"), full_test: bool = False
) -> BenchConfig:
    """The library's defaults for ``--method scalabl`` (no settings given) against mle and
    temperature-scaled mle on both ARCs, at the study's budget; ``full_test``: on the whole
    held-out test split (500 and 300 questions, a lower ECE floor than 100 questions give)."""
    return BenchConfig(
        tasks=list(tasks),
        methods={
            "mle": {},
            "temperature": {"from": "mle"},
            "scalabl-defaults": {"method": {"method": "scalabl"}},
        },
        seeds=SEEDS,
        base={**BASE, "max_test": None} if full_test else BASE,
        out="runs/calibration-study",
        archive=str(ARCHIVE),
    )


def summarise(values: list[float]) -> dict[str, float]:
    """Mean, sample std (0 for one value) and count, as the bench's tables compute them."""
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "n": len(values)}


def _fmt(stat: dict[str, float] | None, scale: float = 1.0, digits: int = 3) -> str:
    if stat is None:
        return "-"
    text = f"{scale * stat['mean']:.{digits}f}"
    return text + (f" ± {scale * stat['std']:.{digits}f}" if stat["n"] > 1 else "")


METRIC_KEYS = ("acc", "ece", "nll", "brier", "mi")


def row_stats(config: BenchConfig, runs: dict[int, dict[str, Any]], label: str, task: str) -> dict[str, Any]:
    """Mean ± std over seeds of a setting's headline metrics and its final posterior (from history)."""
    row: dict[str, Any] = {"seeds": sorted(runs)}
    for key in METRIC_KEYS:
        vals = [entry(m["eval"], headline(m)).get(key) for m in runs.values()]
        vals = [v for v in vals if v is not None]
        row[key] = summarise(vals) if vals else None
    floors = [
        ece_floor(RunFolder(config.finished_dir(label, task, seed)).predictions(headline(m))[0])
        for seed, m in runs.items()
    ]
    row["ece_floor"] = summarise(floors)
    finals: dict[str, list[float]] = {"sigma": [], "mu": [], "sigma_over_mu": []}
    for seed in runs:
        history = RunFolder(config.finished_dir(label, task, seed)).history()  # empty for post-hoc cells
        last = history[-1] if history else {}
        for key in finals:
            if key in last:
                finals[key].append(last[key])
    for key, vals in finals.items():
        row[key] = summarise(vals) if vals else None
    return row


def report(config: BenchConfig) -> dict[str, Any]:
    """Per-lever tables (each with its budget's mle and temperature), JSON, and the sigma/mu plot."""
    results = collect(config)
    task = config.tasks[0]
    stats = {
        label: row_stats(config, per[task], label, task) for label, per in results.items() if task in per
    }
    budgets = {name for v in BUDGET_LEVERS.values() for name, _ in v}
    lines = [
        "# Calibration study: ScalaBL settings on ARC-Easy",
        "",
        f"`python benchmarks/calibration_study.py report`. Embedded SmolLM2-135M-Instruct, "
        f"{BASE['train']['steps']} steps of batch {BASE['train']['batch_size']} at lr {BASE['train']['lr']}, "
        f"LoRA r = 8, test n = {BASE['max_test']}, S = {BASE['n_samples'][0]} samples for ScalaBL. "
        "Mean ± sample std over the seeds listed. Each setting changes one thing from the reference "
        "`scalabl` (elbo, variational lr 2e-2, correct KL, sigma_init 0.05, prior std 1, KL weight 1); "
        "mle and temperature rows have the same budget. ECE floor: the ECE a perfectly calibrated "
        "predictor with the same probabilities shows on this test set (labels drawn from the "
        "predictions; `scalabl.metrics.ece_floor`): ECE within a point or two of it is as calibrated "
        "as 100 questions can tell.",
        "",
    ]
    header = "| setting | seeds | ACC | ECE (%) | ECE floor (%) | NLL | Brier | MI (nats) | final sigma | final sigma/mu |"
    for levers in (POSTERIOR_LEVERS, BUDGET_LEVERS):
        for lever, settings in levers.items():
            lines += [f"## {lever}", "", header, "| --- |" + " --- |" * 9]
            for name, _ in settings:
                if name in budgets:
                    labels = [f"{m}-{name}" for m in ("mle", "temperature", "scalabl")]
                    labels += [f"scalabl-{name}+{v}" for v in BUDGET_VARIANTS.get(name, [])]
                elif lever == "reference":
                    labels = ["mle", "temperature", name]
                else:  # the posterior levers share the reference's mle and temperature rows
                    labels = [name]
                for label in labels:
                    r = stats.get(label)
                    if r is None:
                        lines.append(f"| {label} | 0 |" + " - |" * 8)
                        continue
                    lines.append(
                        f"| {label} | {len(r['seeds'])} | {_fmt(r['acc'])} | {_fmt(r['ece'], 100, 1)} | "
                        f"{_fmt(r['ece_floor'], 100, 1)} | "
                        f"{_fmt(r['nll'])} | {_fmt(r['brier'])} | {_fmt(r['mi'], 1, 4)} | "
                        f"{_fmt(r['sigma'])} | {_fmt(r['sigma_over_mu'])} |"
                    )
            lines.append("")
    text = "\n".join(lines)
    write_text(RESULTS / "calibration_study.md", text)
    write_json(RESULTS / "calibration_study.json", stats)
    histories = {}
    for label, per in results.items():
        runs = per.get(task, {})
        if 0 in runs and not label.startswith(("mle", "temperature")):
            histories[label] = RunFolder(config.finished_dir(label, task, 0)).history()
    if histories:
        plot_training_curves(
            histories, RESULTS / "calibration_study_sigma.png", keys=("sigma_over_mu", "nll")
        )
    print(text)
    return stats


def report_target(config: BenchConfig) -> dict[str, Any]:
    """The issue's target on each task: ScalaBL (defaults) ECE <= half of mle's, NLL below mle's,
    ACC within 1 point; writes calibration_target.{md,json} (the first ``max_test`` test questions)
    or calibration_target_full.{md,json} (the whole test split)."""
    results = collect(config)
    full = config.base.get("max_test") is None
    stem = "calibration_target_full" if full else "calibration_target"
    lines = [
        "# The defaults against plain LoRA on the "
        + ("whole test split" if full else "first test questions"),
        "",
        f"`python benchmarks/calibration_study.py target{' --full-test' if full else ''}` then `report`. "
        "Same budget as the study "
        f"({BASE['train']['steps']} steps of batch {BASE['train']['batch_size']}, lr {BASE['train']['lr']}); "
        "`scalabl-defaults` is `--method scalabl` with no posterior or training option given. "
        "Mean ± sample std over seeds.",
        "",
    ]
    out: dict[str, Any] = {}
    for task in config.tasks:
        stats = {
            label: row_stats(config, per[task], label, task) for label, per in results.items() if task in per
        }
        if not stats:
            continue
        out[task] = stats
        n = next(iter(results[next(iter(stats))][task].values()))["n_test"]
        lines += [f"## {task} (test n = {n})", ""]
        lines += [
            "| setting | seeds | ACC | ECE (%) | ECE floor (%) | NLL | Brier | MI (nats) |",
            "| --- |" + " --- |" * 7,
        ]
        for label, r in stats.items():
            lines.append(
                f"| {label} | {len(r['seeds'])} | {_fmt(r['acc'])} | {_fmt(r['ece'], 100, 1)} | "
                f"{_fmt(r['ece_floor'], 100, 1)} | {_fmt(r['nll'])} | {_fmt(r['brier'])} | {_fmt(r['mi'], 1, 4)} |"
            )
        mle, ours = stats.get("mle"), stats.get("scalabl-defaults")
        if mle and ours:
            ratio = ours["ece"]["mean"] / mle["ece"]["mean"]
            d_nll = ours["nll"]["mean"] - mle["nll"]["mean"]
            d_acc = ours["acc"]["mean"] - mle["acc"]["mean"]
            met = ratio <= 0.5 and d_nll < 0 and abs(d_acc) <= 0.01
            lines += [
                "",
                f"Target: ECE ratio scalabl / mle = {ratio:.2f} (≤ 0.50), NLL difference {d_nll:+.3f} (< 0), "
                f"ACC difference {100 * d_acc:+.1f} points (within ±1): **{'met' if met else 'not met'}**.",
            ]
            out[task]["target"] = {"ece_ratio": ratio, "nll_diff": d_nll, "acc_diff": d_acc, "met": met}
        lines.append("")
    text = "\n".join(lines)
    write_text(RESULTS / f"{stem}.md", text)
    write_json(RESULTS / f"{stem}.json", out)
    print(text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("run", "report", "target"))
    parser.add_argument(
        "--shard", type=parse_shard, default=None, help="I/N: run only shard I of N (0-based)"
    )
    parser.add_argument(
        "--share", action="store_true", help="share the grid with other --share processes (claim files)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 per process for two)")
    parser.add_argument(
        "--tasks", default="arc_easy,arc_challenge", help="target: the tasks (comma-separated)"
    )
    parser.add_argument(
        "--full-test", action="store_true", help="target: the whole test split, not 100 questions"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = tuple(args.tasks.split(","))
    if args.what == "report":
        report(study_config())
        report_target(target_config(tasks))
        report_target(target_config(tasks, full_test=True))
        return
    for config in phases() if args.what == "run" else [target_config(tasks, args.full_test)]:
        run_bench(config, progress=True, shard=args.shard, share=args.share)


if __name__ == "__main__":
    main()
