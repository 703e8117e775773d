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
   on a model that adapts lm_head) when :func:`scalabl.predict.predict_log_proba` has one; and
   examples per second of every row.

Times are taken on two clocks over the same spans: wall time and the process's CPU time.

    OMP_NUM_THREADS=1 python benchmarks/speed.py --out benchmarks/results [--reps R] [--quick] [--threads 1]

``--quick`` runs the same measurements on a tiny random Llama (tests/conftest.py) in seconds.
Writes speed.json and speed.md into ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import inspect
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import scalabl.predict
from scalabl.data import Example, load_splits
from scalabl.io import write_json, write_text
from scalabl.methods import MethodConfig, get_method
from scalabl.methods.base import lora_layers, posterior_stats
from scalabl.models import EMBEDDED_MODEL, load_model
from scalabl.report import markdown_table
from scalabl.scoring import Scorer
from scalabl.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TASK = "arc_easy"
METHODS = ("mle", "scalabl", "blob")
PAIRS = (("scalabl", "mle"), ("blob", "mle"))
STEP_TARGET = 1.05  # issue 6: ScalaBL / LoRA training step time
N_SAMPLES = 10
LM_HEAD_TARGETS = ("q_proj", "v_proj", "lm_head")


# ---- models ------------------------------------------------------------------------------------------
def _conftest():
    """tests/conftest.py as a module: its tiny random Llama and byte tokenizer (for --quick)."""
    spec = importlib.util.spec_from_file_location("_scalabl_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def base_model(quick: bool) -> tuple[nn.Module, Any]:
    """A fresh base model and its tokenizer: the embedded SmolLM2 or (quick) a tiny random Llama."""
    if not quick:
        return load_model(EMBEDDED_MODEL)
    conftest = _conftest()
    tokenizer = conftest.make_byte_tokenizer()
    model = conftest.make_tiny_llama(vocab_size=len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def wrapped(method: str, quick: bool, *, targets: tuple[str, ...] | None = None, seed: int = 0):
    """(peft model with the method's adapter, tokenizer), rank 8, default or given targets."""
    model, tokenizer = base_model(quick)
    config = (
        MethodConfig(method=method)
        if targets is None
        else MethodConfig(method=method, target_modules=targets)
    )
    torch.manual_seed(seed)
    return get_method(config).wrap(model), tokenizer


# ---- training steps: the library's own loop, one step at a time ------------------------------------------
class Lockstep:
    """A method's own training loop (``Method.fit``, i.e. :func:`scalabl.train.fit`) in a thread of its own,
    advanced one step at a time by the caller.

    fit logs every step (``log_every=1``); its ``on_log`` callback records the time since the step was
    let go, hands control back and waits for the next :meth:`advance`. Exactly one thread runs at any
    time, so the steps of several methods interleave with no reimplementation of the loop. A step's time
    runs from its release to its log record: the loop body (scorer logits, cross-entropy, KL, clipping,
    AdamW, schedule) plus the per-log posterior statistics (timed apart by :func:`stats_seconds`).
    """

    def __init__(
        self, method: str, model: nn.Module, scorer: Scorer, train: Sequence[Example], steps: int
    ) -> None:
        self.method, self.model, self.scorer = method, model, scorer
        self.go, self.done = threading.Event(), threading.Event()
        self.seconds: list[float] = []  # wall clock, one per step, warm-up included
        self.cpu_seconds: list[float] = []  # CPU time of the process over the same spans
        self.error: BaseException | None = None
        self.threads: int | None = None
        self._t0 = self._c0 = 0.0
        config = TrainConfig(steps=steps, batch_size=len(train), log_every=1)
        self._fit = lambda: get_method(MethodConfig(method=method)).fit(
            model, scorer, list(train), config, progress=False, on_log=self._on_log
        )
        self._thread = threading.Thread(target=self._run, name=f"fit-{method}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._wait()
            self.threads = torch.get_num_threads()
            self._fit()
        except BaseException as err:  # handed to the caller by advance()
            self.error = err
        finally:
            self.done.set()

    def _wait(self) -> None:
        self.go.wait()
        self.go.clear()
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def _on_log(self, record: dict[str, Any]) -> None:
        self.seconds.append(time.perf_counter() - self._t0)
        self.cpu_seconds.append(time.process_time() - self._c0)
        self.done.set()
        self._wait()

    def advance(self) -> None:
        """Let the loop run one step (or, after its last step, finish)."""
        self.go.set()
        self.done.wait()
        self.done.clear()
        if self.error is not None:
            raise RuntimeError(f"{self.method}: training failed") from self.error

    def finish(self) -> None:
        self.advance()
        self._thread.join()


def profiled_fit(
    method: str, model: nn.Module, scorer: Scorer, train: Sequence[Example], profiled: int
) -> list[int]:
    """Tensor peaks of ``profiled`` steps of the method's own fit, after one unprofiled step.

    The profiler starts and stops in fit's ``on_log`` callback, so a window holds exactly one step
    (and its log); the first step builds AdamW's state, which the profiled steps then find in place.
    """
    peaks: list[int] = []
    current: list[Any] = []

    def on_log(record: dict[str, Any]) -> None:
        if current:
            prof = current.pop()
            prof.__exit__(None, None, None)
            peaks.append(tensor_peak(prof))
        if record["step"] <= profiled:
            gc.collect()
            prof = tensor_profile()
            prof.__enter__()
            current.append(prof)

    config = TrainConfig(steps=profiled + 1, batch_size=len(train), log_every=1)
    get_method(MethodConfig(method=method)).fit(
        model, scorer, list(train), config, progress=False, on_log=on_log
    )
    return peaks


def stats_seconds(model: nn.Module, repeats: int = 20) -> float:
    """Median time of the per-log posterior statistics that every timed step includes (log_every = 1)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        posterior_stats(model)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---- memory -------------------------------------------------------------------------------------------
def tensor_profile():
    """A PyTorch profiler that records every CPU allocation and free (``profile_memory=True``)."""
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU], profile_memory=True)


def tensor_peak(prof) -> int:
    """Peak of the bytes held by tensors allocated within the profiled window.

    Every allocation event of the CPU allocator carries its address and size; a free (negative size)
    counts only if its block was allocated within the window, so tensors that existed before (and
    whatever an earlier profiled window left in the allocator's running total) do not enter.
    """
    from torch._C._profiler import _EventType

    def walk(nodes):
        for node in nodes:
            yield node
            yield from walk(node.children)

    nodes = [
        n
        for n in walk(prof.profiler.kineto_results.experimental_event_tree())
        if n.tag == _EventType.Allocation
    ]
    nodes.sort(key=lambda n: n.start_time_ns)
    live: dict[int, int] = {}
    held = peak = 0
    for node in nodes:
        e = node.extra_fields
        if str(e.device) != "cpu":
            continue
        if e.alloc_size > 0:
            live[e.ptr] = e.alloc_size
            held += e.alloc_size
            peak = max(peak, held)
        else:
            held -= live.pop(e.ptr, 0)
    return peak


def resting_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes a model holds between steps (distinct storages): frozen weights, adapter, AdamW state.

    fit's optimiser is internal to it; AdamW keeps two moments per trainable tensor (``exp_avg``,
    ``exp_avg_sq``, same size) and a scalar step count.
    """
    seen: set[int] = set()

    def size(tensors) -> int:
        total = 0
        for t in tensors:
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        return total

    trainable_params = [p for p in model.parameters() if p.requires_grad]
    trainable = size(trainable_params)
    frozen = size(p for p in model.parameters() if not p.requires_grad) + size(model.buffers())
    optimizer = 2 * trainable + 4 * len(trainable_params)
    return {
        "frozen": frozen,
        "trainable": trainable,
        "optimizer": optimizer,
        "total": frozen + trainable + optimizer,
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_child(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process (benchmarks/plan_check.py's method): resident memory of a first training step."""
    model, tokenizer = wrapped(method, args.quick)
    scorer = Scorer(tokenizer)
    batch = load_splits(TASK).train[: args.batch_size]
    for e in batch:  # tokenise outside the measured step
        scorer.encode(e)
    config = TrainConfig(steps=1, batch_size=args.batch_size)
    gc.collect()
    before = _rss_bytes()
    try:  # reset the peak (VmHWM) to the current resident memory: the load's own peak cannot hide the step's
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # plan_check's "before"
    get_method(MethodConfig(method=method)).fit(model, scorer, list(batch), config, progress=False)
    peak = _peak_rss_bytes()
    return {"method": method, "before": before, "peak": peak, "step": peak - before, "peak_reset": reset}


def measure_rss(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out = {}
    for method in METHODS:
        cmd = [sys.executable, __file__, "--rss-child", method, "--threads", str(args.threads)]
        cmd += ["--batch-size", str(args.batch_size)] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[method] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  rss {method}: step {out[method]['step'] / 2**20:.1f} MB", flush=True)
    return out


# ---- prediction ---------------------------------------------------------------------------------------
def has_sample_modules() -> bool:
    return "sample_modules" in inspect.signature(scalabl.predict.predict_log_proba).parameters


def adapted(model: nn.Module, module: str) -> bool:
    return any(name.split(".")[-1] == module for name, _ in lora_layers(model))


def _row(name: str, model: nn.Module, scorer: Scorer, base: str | None, **kw: Any) -> dict[str, Any]:
    return {"row": name, "model": model, "scorer": scorer, "kw": kw, "base": base}


def prediction_rows(
    args: argparse.Namespace, model: nn.Module, tokenizer
) -> tuple[list[dict[str, Any]], dict]:
    """The rows to time: name, model, scorer, predict_log_proba keyword arguments, baseline row."""
    scorer = Scorer(tokenizer)
    s0 = "S=0 (posterior mean)"
    rows = [
        _row(s0, model, scorer, None, n_samples=0),
        _row(f"S={N_SAMPLES}, plain loop", model, scorer, s0, n_samples=N_SAMPLES, batch_samples=False),
        _row(
            f"S={N_SAMPLES}, batch_samples=True", model, scorer, s0, n_samples=N_SAMPLES, batch_samples=True
        ),
    ]
    fast: dict[str, Any] = {
        "available": has_sample_modules(),
        "signature": str(inspect.signature(scalabl.predict.predict_log_proba)),
    }
    if not fast["available"]:
        fast["note"] = (
            "scalabl.predict.predict_log_proba has no sample_modules parameter: no module-subset path"
        )
        return rows, fast
    # The subset path proper is sample_modules with batch_samples=True (the network before the subset
    # runs once); with the plain loop (--subset-loop) every sample is still a full pass.
    loops = (True, False) if args.subset_loop else (True,)

    def subset_rows(spec: str, model: nn.Module, scorer: Scorer, base: str, suffix: str = "") -> list[dict]:
        return [
            _row(
                f'S={N_SAMPLES}, sample_modules="{spec}", '
                + ("batch_samples=True" if b else "plain loop")
                + suffix,
                model,
                scorer,
                base,
                n_samples=N_SAMPLES,
                batch_samples=b,
                sample_modules=spec,
            )
            for b in loops
        ]

    rows += subset_rows("last:2", model, scorer, s0)
    head_model, head_tok = wrapped("scalabl", args.quick, targets=LM_HEAD_TARGETS)
    fast["lm_head_adapted"] = adapted(head_model, "lm_head")
    if fast["lm_head_adapted"]:
        head_scorer, head_s0 = Scorer(head_tok), "S=0, q/v + lm_head model"
        rows.append(_row(head_s0, head_model, head_scorer, None, n_samples=0))
        rows += subset_rows("lm_head", head_model, head_scorer, head_s0, " (q/v + lm_head model)")
    else:
        fast["note"] = f"lm_head is not an adapted module with targets {LM_HEAD_TARGETS}: no lm_head row"
    return rows, fast


def time_prediction(
    rows: list[dict[str, Any]], examples: Sequence[Example], reps: int, batch_size: int
) -> None:
    """Fill ``seconds`` (one per repetition) and ``error`` of every row; rows interleaved, order rotated."""
    for row in rows:
        row["seconds"], row["cpu_seconds"], row["error"] = [], [], None
        try:  # warm-up: tokenisation cache, first-call costs (and a check that the row runs at all)
            scalabl.predict.predict_log_proba(
                row["model"], row["scorer"], examples[:2], batch_size=batch_size, **row["kw"]
            )
        except Exception as err:  # a fast path under construction must not sink the other rows
            row["error"] = f"{type(err).__name__}: {err}"
            print(f"  {row['row']}: {row['error']}", flush=True)
    live = [r for r in rows if r["error"] is None]
    for rep in range(reps):
        for row in live[rep % len(live) :] + live[: rep % len(live)]:
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            scalabl.predict.predict_log_proba(
                row["model"], row["scorer"], examples, batch_size=batch_size, **row["kw"]
            )
            row["seconds"].append(time.perf_counter() - t0)
            row["cpu_seconds"].append(time.process_time() - c0)
        print(
            f"  prediction rep {rep + 1}/{reps}: " + ", ".join(f"{r['seconds'][-1]:.2f}s" for r in live),
            flush=True,
        )


# ---- helpers ------------------------------------------------------------------------------------------
def ratio_summary(num: Sequence[float], den: Sequence[float]) -> dict[str, Any]:
    per_rep = [a / b for a, b in zip(num, den, strict=True)]
    return {
        "median_of_ratios": statistics.median(per_rep),
        "ratio_of_medians": statistics.median(num) / statistics.median(den),
        "min_ratio": min(per_rep),
        "max_ratio": max(per_rep),
        "per_rep": per_rep,
    }


def batch_tokens(tokenizer, batch: Sequence[Example]) -> dict[str, int]:
    enc = [Scorer(tokenizer).encode(e) for e in batch]
    return {
        "prompt_tokens": sum(len(e.prompt) for e in enc),
        "answer_tokens": sum(len(c) for e in enc for c in e.choices),
        "choices": sum(e.n_choices for e in enc),
    }


MB = 2**20


def git_state() -> dict[str, Any]:
    """The commit measured and whether src/ had uncommitted changes (the library code that ran)."""

    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *cmd], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        changed = git("status", "--porcelain", "--", "src").splitlines()
        return {"commit": git("rev-parse", "HEAD"), "src_uncommitted_files": len(changed)}
    except (OSError, subprocess.CalledProcessError):
        return {}


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
            "model": "tiny random Llama (tests/conftest.py)" if args.quick else EMBEDDED_MODEL,
            "task": TASK,
            "rank": MethodConfig().rank,
            "target_modules": list(MethodConfig().target_modules),
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


def render(result: dict[str, Any]) -> str:
    s, tr, mem, pred = result["settings"], result["training_step"], result["memory"], result["prediction"]
    step_rows = []
    for a, b in PAIRS:
        for clock, key, med in (
            ("wall", "ratios", tr["median_seconds"]),
            ("CPU", "cpu_ratios", tr["median_cpu_seconds"]),
        ):
            r = tr[key][f"{a}/{b}"]
            step_rows.append(
                {
                    "pair": f"{a} / {b}",
                    "clock": clock,
                    "median": r["median_of_ratios"],
                    "range": f"{r['min_ratio']:.3f}-{r['max_ratio']:.3f}",
                    "rom": r["ratio_of_medians"],
                    "num": med[a],
                    "den": med[b],
                }
            )
    step_table = markdown_table(
        step_rows,
        ["pair", "clock", "median", "range", "rom", "num", "den"],
        {
            "median": "median of per-rep ratios",
            "range": "per-rep range",
            "rom": "ratio of medians",
            "num": "median step (s), method",
            "den": "median step (s), LoRA",
        },
        {"median": "{:.3f}", "rom": "{:.3f}", "num": "{:.3f}", "den": "{:.3f}"},
    )
    mem_rows = []
    for a, b in PAIRS:
        row = {
            "pair": f"{a} / {b}",
            "total": mem["ratios"][f"{a}/{b}"]["total_peak"],
            "step": mem["ratios"][f"{a}/{b}"]["step_peak"],
            "a_total": mem["total_peak_bytes"][a] / MB,
            "b_total": mem["total_peak_bytes"][b] / MB,
            "a_step": mem["step_peak_bytes"][a] / MB,
            "b_step": mem["step_peak_bytes"][b] / MB,
        }
        if "rss" in mem:
            row["rss"] = mem["rss"]["ratios"][f"{a}/{b}"]
        mem_rows.append(row)
    mem_cols = ["pair", "total", "step", "a_total", "b_total", "a_step", "b_step"] + (
        ["rss"] if "rss" in mem else []
    )
    mem_table = markdown_table(
        mem_rows,
        mem_cols,
        {
            "total": "total peak ratio",
            "step": "step peak ratio",
            "a_total": "total peak (MB), method",
            "b_total": "total peak (MB), LoRA",
            "a_step": "step peak (MB), method",
            "b_step": "step peak (MB), LoRA",
            "rss": "RSS step ratio (plan_check method)",
        },
        {k: "{:.3f}" for k in ("total", "step", "rss")}
        | {k: "{:.1f}" for k in ("a_total", "b_total", "a_step", "b_step")},
    )
    resting_rows = [
        {
            "method": m,
            "frozen": mem["resting_bytes"][m]["frozen"] / MB,
            "trainable": mem["resting_bytes"][m]["trainable"] / MB,
            "optimizer": mem["resting_bytes"][m]["optimizer"] / MB,
            "step": mem["step_peak_bytes"][m] / MB,
            "rss": mem["rss"]["per_method"][m]["step"] / MB if "rss" in mem else None,
        }
        for m in METHODS
    ]
    resting_table = markdown_table(
        resting_rows,
        ["method", "frozen", "trainable", "optimizer", "step", "rss"],
        {
            "frozen": "frozen weights (MB)",
            "trainable": "adapter (MB)",
            "optimizer": "AdamW state (MB)",
            "step": "step peak, tensors (MB)",
            "rss": "step peak, RSS (MB)",
        },
        {k: "{:.2f}" for k in ("frozen", "trainable", "optimizer", "step", "rss")},
    )
    pred_rows = []
    for r in pred["rows"]:
        pred_rows.append(
            {
                "row": r["row"],
                "ratio": r["ratio"]["median_of_ratios"] if "ratio" in r else None,
                "rom": r["ratio"]["ratio_of_medians"] if "ratio" in r else None,
                "cpu": r["cpu_ratio"]["median_of_ratios"] if "cpu_ratio" in r else None,
                "sec": r.get("median_seconds"),
                "eps": r.get("examples_per_second"),
                "note": r["error"] or (f"vs {r['vs']}" if r.get("vs") else "baseline"),
            }
        )
    pred_table = markdown_table(
        pred_rows,
        ["row", "ratio", "rom", "cpu", "sec", "eps", "note"],
        {
            "ratio": "time / S=0, wall (median of per-rep ratios)",
            "rom": "wall, ratio of medians",
            "cpu": "CPU time / S=0 (median of per-rep ratios)",
            "sec": "median wall time (s)",
            "eps": "examples / s (wall)",
        },
        {"ratio": "{:.2f}", "rom": "{:.2f}", "cpu": "{:.2f}", "sec": "{:.2f}", "eps": "{:.2f}"},
    )
    fast = pred["sample_modules"]
    fast_line = (
        "Module-subset path: `scalabl.predict.predict_log_proba` has `sample_modules`"
        + (f" ({fast['note']})" if fast.get("note") else "")
        + "."
        if fast["available"]
        else f"Module-subset path: not available ({fast['note']})."
    )
    m = result["machine"]
    tok = s["train_batch_tokens"]
    verdict = {k: "met" if v else "not met" for k, v in tr["target_met"].items()}
    stats_ms = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in tr["posterior_stats_seconds"].items())
    return (
        "# Speed: ScalaBL against plain LoRA and BLoB\n\n"
        f"`{result['command']}`: {s['model']}, {s['task']} (continuation scoring), rank {s['rank']}, "
        f"targets {', '.join(s['target_modules'])}; {m['threads']} CPU thread(s) of {m['cpus']}, torch {m['torch']}; "
        f"load average {m['loadavg_start'][0]:.2f} at the start, {m['loadavg_end'][0]:.2f} at the end; "
        f"{m['wall_seconds']:.0f} s in all.\n\n"
        f"## Training step time\n\nThe same {len(s['train_batch'])} training questions every step "
        f"({tok['choices']} choices, {tok['prompt_tokens']} prompt + {tok['answer_tokens']} answer tokens), default "
        f"TrainConfig (elbo recipe). Timed: {tr['how']}. {s['warmup']} warm-up step(s) per method untimed, then "
        f"{s['reps']} repetitions of one step per method, order rotated. Each timed step includes fit's per-log "
        f"posterior statistics ({stats_ms}). Two clocks over the same spans: wall time, and the CPU time of the "
        "process (time.process_time; one thread computes at a time, so it is the step's compute, without the "
        "time the shared machine gave to other jobs). Target ScalaBL / LoRA <= "
        f"{tr['target_scalabl_over_mle']} (median of per-rep ratios): wall {verdict['wall']}, CPU {verdict['cpu']}."
        f"\n\n{step_table}\n"
        f"## Peak training memory of one step\n\n{mem['method']}.\n\n{mem_table}\n{resting_table}\n"
        + (f"RSS cross-check: {mem['rss']['method']}.\n\n" if "rss" in mem else "")
        + f"## Prediction (ScalaBL, S = {pred['n_samples']})\n\n{pred['questions']} test questions, batch size "
        f"{pred['batch_size']}, {s['pred_reps']} repetitions, rows interleaved (order rotated); each ratio is "
        f"against the S = 0 pass of the same model in the same repetition (CPU time: time.process_time over the "
        f"same spans). {fast_line}\n\n{pred_table}"
    )


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
