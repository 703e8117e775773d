"""The measurements of benchmarks/speed.py: the library's own training loop advanced step by step,
tensor and resident-memory peaks, and timed prediction rows (see speed.py's docstring for what each
figure means)."""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalabl.bayesian import lora_layers, posterior_stats
from scalabl.config import MethodConfig, PredictConfig, TrainConfig
from scalabl.data import load_splits
from scalabl.examples import Example
from scalabl.methods import get_method
from scalabl.models import EMBEDDED_MODEL, load_model
from scalabl.predict import predict_samples
from scalabl.scoring import Scorer
from scalabl.testing import make_byte_tokenizer, make_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
TASK = "arc_easy"
# label -> the method's options: plain LoRA, the paper's ScalaBL, BLoB, ScalaBL's variants (issue 20) and
# the 2025-26 peers (issue 23, IVON at the regime suite's rate)
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "mle": {"method": "mle"},
    "scalabl": {"method": "scalabl"},
    "blob": {"method": "blob"},
    "scalabl-full": {"method": "scalabl", "covariance": "full"},
    "scalabl-shared": {"method": "scalabl", "noise_sharing": "adapter"},
    "scalabl-eb": {"method": "scalabl", "prior_fit": "model"},
    "ivon": {"method": "ivon", "ivon_lr": 2.0},
    "blora_xs": {"method": "blora_xs"},
}
METHODS = tuple(METHOD_OPTIONS)
PAIRS = tuple((m, "mle") for m in METHODS if m != "mle")
STEP_TARGET = 1.05  # issue 6: ScalaBL / LoRA training step time
N_SAMPLES = 10
LM_HEAD_TARGETS = ("q_proj", "v_proj", "lm_head")
MB = 2**20


def method_config(label: str, **fields: Any) -> MethodConfig:
    """The MethodConfig a label of :data:`METHODS` stands for."""
    return MethodConfig(**METHOD_OPTIONS[label], **fields)


# ---- models ------------------------------------------------------------------------------------------
def base_model(quick: bool) -> tuple[nn.Module, Any]:
    """A fresh base model and its tokenizer: the embedded SmolLM2 or (quick) a tiny random Llama."""
    if not quick:
        return load_model(EMBEDDED_MODEL)
    tokenizer = make_byte_tokenizer()
    model = make_tiny_llama(vocab_size=len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def wrapped(method: str, quick: bool, *, targets: tuple[str, ...] | None = None, seed: int = 0):
    """(peft model with the method's adapter, tokenizer), rank 8, default or given targets."""
    model, tokenizer = base_model(quick)
    config = method_config(method) if targets is None else method_config(method, target_modules=targets)
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
        self._fit = lambda: get_method(method_config(method)).fit(
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
    get_method(method_config(method)).fit(model, scorer, list(train), config, progress=False, on_log=on_log)
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
    get_method(method_config(method)).fit(model, scorer, list(batch), config, progress=False)
    peak = _peak_rss_bytes()
    return {"method": method, "before": before, "peak": peak, "step": peak - before, "peak_reset": reset}


# ---- prediction ---------------------------------------------------------------------------------------
def adapted(model: nn.Module, module: str) -> bool:
    return any(name.split(".")[-1] == module for name, _ in lora_layers(model))


def _row(name: str, model: nn.Module, scorer: Scorer, base: str | None, **kw: Any) -> dict[str, Any]:
    return {"row": name, "model": model, "scorer": scorer, "kw": kw, "base": base}


def prediction_rows(
    args: argparse.Namespace, model: nn.Module, tokenizer
) -> tuple[list[dict[str, Any]], dict]:
    """The rows to time: name, model, scorer, PredictConfig fields, baseline row."""
    scorer = Scorer(tokenizer)
    s0 = "S=0 (posterior mean)"
    rows = [
        _row(s0, model, scorer, None, n_samples=0),
        _row(f"S={N_SAMPLES}, plain loop", model, scorer, s0, n_samples=N_SAMPLES, batch_samples=False),
        _row(
            f"S={N_SAMPLES}, batch_samples=True", model, scorer, s0, n_samples=N_SAMPLES, batch_samples=True
        ),
    ]
    fast: dict[str, Any] = {"available": True}
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
            predict_samples(
                row["model"], row["scorer"], examples[:2], PredictConfig(batch_size=batch_size, **row["kw"])
            )
        except Exception as err:  # a fast path under construction must not sink the other rows
            row["error"] = f"{type(err).__name__}: {err}"
            print(f"  {row['row']}: {row['error']}", flush=True)
    live = [r for r in rows if r["error"] is None]
    for rep in range(reps):
        for row in live[rep % len(live) :] + live[: rep % len(live)]:
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            predict_samples(
                row["model"], row["scorer"], examples, PredictConfig(batch_size=batch_size, **row["kw"])
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
