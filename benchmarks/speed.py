"""Speed and memory of ScalaBL against plain LoRA (and BLoB): training step, peak training memory, prediction.

Every figure is a ratio measured within one run, the methods interleaved repetition by repetition
so that the noise of a shared machine hits all of them alike; the report gives the median of the
per-repetition ratios and the raw medians.

1. Training step time, ScalaBL / LoRA (``mle``) and BLoB / LoRA: the same batch of ARC-Easy questions
   (continuation scoring), rank 8, default target modules, default TrainConfig (``elbo`` recipe). The
   step timed is the library's own: each method's ``Method.fit`` (:func:`scalabl.train.fit`) runs in a
   thread of its own with ``log_every=1``, and its ``on_log`` callback hands control back after every
   step, so the methods' steps interleave (one thread running at a time, the order rotated from one
   repetition to the next) with nothing of the loop re-implemented. Warm-up steps are not timed. The
   per-log posterior statistics each timed step includes are timed apart.
2. Peak training memory of one step, same pairs. Primary: bytes held by tensors, from the CPU
   allocator's allocation and free events as the PyTorch profiler records them
   (``profile_memory=True``) over one step of the method's own fit: the peak of what was allocated within the
   step and still held, plus the resting tensors (weights, adapter, AdamW moments). Cross-check: the
   method of benchmarks/plan_check.py, peak resident memory of a first step (``fit(steps=1)``) in a
   fresh process minus the resident memory before it (the peak reset just before the step with
   /proc/self/clear_refs where Linux allows it); it includes allocator slack and the optimiser's
   first-step state.
3. Prediction (ScalaBL): the time of S = 10 posterior samples over the time of one deterministic pass
   (S = 0) on the same questions, for the plain loop, for ``batch_samples=True``, and for the
   module-subset path (``sample_modules`` with ``batch_samples=True``; ``"last:2"``, and ``"lm_head"``
   on a model that adapts lm_head); and
   examples per second of every row.

Times are taken on two clocks over the same spans: wall time and the process's CPU time.

    OMP_NUM_THREADS=1 python benchmarks/speed.py --out benchmarks/results [--reps R] [--quick] [--threads 1]

``--quick`` runs the same measurements on a tiny random Llama (:mod:`scalabl.testing`) in seconds.
Writes speed.json and speed.md into ``--out``. The measurements are in speed_measure.py, the report
in speed_render.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from speed_measure import (
    METHODS,
    N_SAMPLES,
    PAIRS,
    STEP_TARGET,
    TASK,
    Lockstep,
    batch_tokens,
    git_state,
    prediction_rows,
    profiled_fit,
    ratio_summary,
    resting_bytes,
    rss_child,
    stats_seconds,
    time_prediction,
    wrapped,
)
from speed_render import render

from scalabl.bayesian import lora_layers
from scalabl.config import MethodConfig, TrainConfig
from scalabl.data import load_splits
from scalabl.io import write_json, write_text
from scalabl.models import EMBEDDED_MODEL
from scalabl.scoring import Scorer


def measure_rss(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out = {}
    for method in METHODS:
        cmd = [sys.executable, __file__, "--rss-child", method, "--threads", str(args.threads)]
        cmd += ["--batch-size", str(args.batch_size)] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[method] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  rss {method}: step {out[method]['step'] / 2**20:.1f} MB", flush=True)
    return out


# ---- main ---------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    code = git_state()
    splits = load_splits(TASK)
    batch = list(splits.train[: args.batch_size])
    examples = list(splits.test[: args.pred_questions])

    # 1. training step time ------------------------------------------------------------------------
    print("training: building the models", flush=True)
    steps = args.warmup + args.reps
    loops: dict[str, Lockstep] = {}
    params: dict[str, dict[str, int]] = {}
    for method in METHODS:
        model, tokenizer = wrapped(method, args.quick)
        scorer = Scorer(tokenizer)
        loops[method] = Lockstep(method, model, scorer, batch, steps)
        params[method] = {
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters()),
        }
    tokens = batch_tokens(tokenizer, batch)
    gc.collect()
    gc.freeze()  # what exists now is never collected: a collection before a step scans only new objects

    def step(method: str) -> None:
        gc.collect()  # outside the timed span: the step's clock starts when the loop is let go
        loops[method].advance()

    for _ in range(args.warmup):
        for method in METHODS:
            step(method)
    for rep in range(args.reps):
        for method in METHODS[rep % len(METHODS) :] + METHODS[: rep % len(METHODS)]:
            step(method)
        print(
            f"  step rep {rep + 1}/{args.reps}: "
            + ", ".join(f"{m} {loops[m].seconds[-1]:.3f}s" for m in METHODS),
            flush=True,
        )
    times = {m: loops[m].seconds[args.warmup :] for m in METHODS}
    cpu = {m: loops[m].cpu_seconds[args.warmup :] for m in METHODS}
    stats = {m: stats_seconds(loops[m].model) for m in METHODS}
    training = {
        "how": (
            "each method's own scalabl.train.fit (via Method.fit) in a thread of its own, logging every step; "
            "its on_log callback hands control back, so the methods' steps interleave, one thread running "
            "at a time; a step is timed from its release to its log record"
        ),
        "median_seconds": {m: statistics.median(v) for m, v in times.items()},
        "seconds": times,
        "median_cpu_seconds": {m: statistics.median(v) for m, v in cpu.items()},
        "cpu_seconds": cpu,
        "warmup_seconds": {m: loops[m].seconds[: args.warmup] for m in METHODS},
        "ratios": {f"{a}/{b}": ratio_summary(times[a], times[b]) for a, b in PAIRS},
        "cpu_ratios": {f"{a}/{b}": ratio_summary(cpu[a], cpu[b]) for a, b in PAIRS},
        "posterior_stats_seconds": stats,
        "thread_torch_threads": {m: loops[m].threads for m in METHODS},
        "target_scalabl_over_mle": STEP_TARGET,
    }
    training["target_met"] = {
        clock: training[key]["scalabl/mle"]["median_of_ratios"] <= STEP_TARGET
        for clock, key in (("wall", "ratios"), ("cpu", "cpu_ratios"))
    }

    for method in METHODS:
        loops[method].finish()

    # 2. peak training memory ---------------------------------------------------------------------------
    print("memory: profiled steps", flush=True)
    peaks = {m: profiled_fit(m, loops[m].model, loops[m].scorer, batch, args.mem_reps) for m in METHODS}
    resting = {m: resting_bytes(loops[m].model) for m in METHODS}
    step_peak = {m: statistics.median(v) for m, v in peaks.items()}
    total_peak = {m: resting[m]["total"] + step_peak[m] for m in METHODS}
    memory: dict[str, Any] = {
        "method": (
            "bytes held by tensors, from the CPU allocator's allocation and free events as the PyTorch "
            "profiler records them (profile_memory=True) over one step of the method's own fit (after an unprofiled "
            "step, on the model of the timed loop); "
            "step peak = the largest sum of the blocks allocated within the step and still held (fit frees "
            "the previous gradients first); total peak = resting tensors (weights, adapter, AdamW's two "
            "moments) + step peak"
        ),
        "step_peak_bytes": step_peak,
        "step_peak_bytes_per_rep": peaks,
        "resting_bytes": resting,
        "total_peak_bytes": total_peak,
        "ratios": {
            f"{a}/{b}": {
                "total_peak": total_peak[a] / total_peak[b],
                "step_peak": step_peak[a] / step_peak[b],
            }
            for a, b in PAIRS
        },
    }
    targets = sorted({name.split(".")[-1] for name, _ in lora_layers(loops["mle"].model)})
    loops.clear()
    gc.unfreeze()
    gc.collect()
    if args.rss:
        print("memory: resident memory in fresh processes (plan_check's method)", flush=True)
        rss = measure_rss(args)
        memory["rss"] = {
            "method": (
                "benchmarks/plan_check.py's method: in a fresh process per method, peak resident memory of "
                "fit(steps=1) minus resident memory before it (peak reset with /proc/self/clear_refs when "
                "allowed, else ru_maxrss); includes allocator slack and AdamW's first-step state"
            ),
            "per_method": rss,
            "ratios": {f"{a}/{b}": rss[a]["step"] / rss[b]["step"] for a, b in PAIRS},
        }

    # 3. prediction ----------------------------------------------------------------------------------------
    print("prediction: ScalaBL", flush=True)
    model, tokenizer = wrapped("scalabl", args.quick)
    rows, fast = prediction_rows(args, model, tokenizer)
    gc.collect()
    gc.freeze()
    time_prediction(rows, examples, args.pred_reps, args.pred_batch_size)
    by_name = {r["row"]: r for r in rows}
    table = []
    for r in rows:
        entry: dict[str, Any] = {
            "row": r["row"],
            "kwargs": r["kw"],
            "seconds": r["seconds"],
            "cpu_seconds": r["cpu_seconds"],
            "error": r["error"],
        }
        if r["error"] is None:
            med = statistics.median(r["seconds"])
            entry["median_seconds"] = med
            entry["median_cpu_seconds"] = statistics.median(r["cpu_seconds"])
            entry["examples_per_second"] = len(examples) / med
            entry["examples_per_cpu_second"] = len(examples) / entry["median_cpu_seconds"]
            base = by_name.get(r["base"]) if r["base"] else None
            if base is not None and base["error"] is None:
                entry["vs"] = base["row"]
                entry["ratio"] = ratio_summary(r["seconds"], base["seconds"])
                entry["cpu_ratio"] = ratio_summary(r["cpu_seconds"], base["cpu_seconds"])
        table.append(entry)
    prediction = {
        "questions": len(examples),
        "batch_size": args.pred_batch_size,
        "n_samples": N_SAMPLES,
        "sample_modules": fast,
        "rows": table,
    }

    return {
        "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "wall_seconds": time.perf_counter() - t_start,
        },
        "code": code,
        "settings": {
            "model": "tiny random Llama (scalabl.testing)" if args.quick else EMBEDDED_MODEL,
            "task": TASK,
            "rank": MethodConfig().rank,
            "target_modules": targets,
            "scoring": "continuation",
            "train_batch": [e.id for e in batch],
            "train_batch_tokens": tokens,
            "train_config": TrainConfig(
                steps=args.warmup + args.reps, batch_size=len(batch), log_every=1
            ).to_dict(),
            "parameters": params,
            "reps": args.reps,
            "warmup": args.warmup,
            "mem_reps": args.mem_reps,
            "pred_reps": args.pred_reps,
        },
        "training_step": training,
        "memory": memory,
        "prediction": prediction,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results", help="folder for speed.json/.md"
    )
    parser.add_argument("--reps", type=int, default=None, help="timed training steps per method (default 12)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps per method first")
    parser.add_argument("--mem-reps", type=int, default=1, help="profiled steps per method (memory)")
    parser.add_argument("--pred-reps", type=int, default=3, help="repetitions of every prediction row")
    parser.add_argument("--pred-questions", type=int, default=8, help="ARC-Easy test questions to predict")
    parser.add_argument("--pred-batch-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4, help="training batch (questions)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-rss", dest="rss", action="store_false", help="skip the fresh-process RSS check")
    parser.add_argument(
        "--quick", action="store_true", help="a tiny random Llama instead of SmolLM2 (seconds)"
    )
    parser.add_argument(
        "--subset-loop",
        action="store_true",
        help="also time sample_modules with the plain loop (slow: every sample a full pass)",
    )
    parser.add_argument("--rss-child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child, args)))
        return
    if args.reps is None:
        args.reps = 12
    for name in ("reps", "pred_reps", "mem_reps", "pred_questions", "pred_batch_size", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    result = run(args)
    text = render(result)
    write_json(args.out / "speed.json", result)
    write_text(args.out / "speed.md", text)
    print("\n" + text)


if __name__ == "__main__":
    main()
