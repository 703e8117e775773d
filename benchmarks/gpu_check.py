"""The GPU check: ScalaBL against plain LoRA on the shipped Qwen2.5-7B, 14B and 32B configs, on one GPU,
in one run of a few minutes, with nothing downloaded.

For each config the base is built with random bf16 weights directly on the GPU (the architecture is
what costs time and memory, not the values) and wrapped in turn with LoRA (``mle``) and ScalaBL, rank
8 on q_proj, v_proj and lm_head (the papers' targets), letter scoring, batch 4 x 300 tokens. Measured
per setting, LoRA and ScalaBL interleaved:

* training step time (steady state, after a warm-up step) and tokens per second, with and without
  gradient checkpointing; the ratio ScalaBL / LoRA;
* peak memory, ``torch.cuda.max_memory_allocated`` over the steps, against ``scalabl plan``'s estimate
  of the same run (ratio measured / planned); an out-of-memory setting is recorded as such;
* prediction: S = 10 against one deterministic pass, for the plain loop (one forward per sample),
  ``batch_samples`` (S copies per forward) and each ``sample_modules`` path (all, lm_head, last:4).

Run (on the GPU machine, from the repository root)::

    python benchmarks/gpu_check.py benchmarks/results/gpu

``--dry-run`` runs every code path on CPU-sized shapes of the same architectures (2 layers, 64 wide)
in seconds: the tests run it. Writes ``gpu_check.json`` and ``gpu_check.md`` into the folder given.
"""

from __future__ import annotations

import argparse
import gc as gc_module
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from scalabl.api import BayesianLoRA
from scalabl.config import MethodConfig, PredictConfig, TrainConfig
from scalabl.examples import Example
from scalabl.io import write_json, write_text
from scalabl.plan import load_config, make_plan
from scalabl.testing import make_byte_tokenizer

MODELS = ("qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b")
METHODS = ("mle", "scalabl")
TARGETS = ("q_proj", "v_proj", "lm_head")
RANK = 8
BATCH = 4
SEQ_LEN = 300
N_SAMPLES = 10
# CPU-sized shapes of the same architectures for --dry-run
DRY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
       "num_key_value_heads": 2, "vocab_size": 257, "max_position_embeddings": 512}  # fmt: skip
GB = 1024**3


def examples(n: int, seq_len: int, seed: int = 0) -> list[Example]:
    """Four-choice questions whose letter prompts are ``seq_len`` byte tokens long."""
    g = torch.Generator().manual_seed(seed)
    words = ["river", "stone", "light", "seed", "cloud", "metal", "plant", "wave"]
    out = []
    for k in range(n):
        picks = torch.randint(len(words), (seq_len,), generator=g).tolist()
        text = " ".join(words[i] for i in picks)
        choices = ("one", "two", "three", "four")
        tail = len("Question: \n" + "\n".join(f"A. {c}" for c in choices) + "\nAnswer:")
        out.append(Example(id=f"q{k}", question=text[: seq_len - tail - 1], choices=choices, label=k % 4))
    return out


def build_base(name: str, device: torch.device, dry: bool, folder: Path) -> tuple[Any, str]:
    """A random bf16 base of the shipped config ``name`` on ``device`` (dry: CPU-sized), and what
    ``scalabl plan`` reads for it (the shipped name, or the shrunk config written to ``folder``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = load_config(name)
    plan_model = name
    if dry:
        derived = ("layer_types", "max_window_layers")  # per-layer lists: re-derived for 2 layers
        raw = {**{k: v for k, v in config.to_dict().items() if k not in derived}, **DRY}
        config = AutoConfig.for_model(**raw)
        plan_model = str(folder / f"{name}.json")
        Path(plan_model).write_text(json.dumps(raw))
    config.pad_token_id = 256  # the byte tokenizer's <eos>, also its pad
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.eval()
    return model, plan_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_setting(base, method: str, gc: bool, train: list[Example], steps: int, device, plan_model: str):
    """Wrap ``base`` with ``method``, train ``steps`` steps (the first a warm-up), unwrap it; returns
    the step time, tokens per second and peak memory against the plan."""
    row: dict[str, Any] = {"method": method, "gradient_checkpointing": gc}
    planned = make_plan(plan_model, method=method, rank=RANK, targets=TARGETS, dtype="bfloat16",
                        batch_size=BATCH, seq_len=SEQ_LEN, answer_tokens=1, gradient_checkpointing=gc)  # fmt: skip
    row["planned_train_gb"] = round(planned.memory_gb["train_total"], 3)
    if device.type == "cuda":
        gc_module.collect()  # what an out-of-memory setting before left behind
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    config = MethodConfig(method=method, rank=RANK, target_modules=TARGETS)
    blora = BayesianLoRA(base, make_byte_tokenizer(), config, scoring="letter", max_length=SEQ_LEN,
                         gradient_checkpointing=gc)  # fmt: skip
    times: list[float] = []
    try:
        sync(device)
        t0 = time.perf_counter()

        def on_log(record: dict[str, Any]) -> None:
            sync(device)
            times.append(time.perf_counter() - t0)

        train_config = TrainConfig(steps=steps, batch_size=BATCH, lr=1e-4, log_every=1, checkpoint_every=0)
        blora.fit(train, train_config, progress=False, on_log=on_log)
        steady = [b - a for a, b in zip(times, times[1:], strict=False)]  # after the warm-up step
        row["step_s"] = sum(steady) / len(steady)
        row["tokens_per_s"] = BATCH * SEQ_LEN / row["step_s"]
        row["extra_parameters"] = blora.extra_parameters
    except torch.OutOfMemoryError:
        row["oom"] = True
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / GB
        row["peak_gb"] = round(peak, 3)
        row["peak_over_plan"] = round(peak / planned.memory_gb["train_total"], 3)
    return blora, row


def unwrap(blora: BayesianLoRA):
    """The base model again, without adapters or checkpointing, for the next setting."""
    base = blora.model.unload()
    if blora.gradient_checkpointing:  # the transformers 5 name, else the older one
        disable = (
            getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable
        )
        disable()
    base.eval()
    return base


def prediction_rows(blora: BayesianLoRA, test: list[Example], device, dry: bool) -> list[dict[str, Any]]:
    """S = 10 prediction against the deterministic pass, each path timed twice (interleaved), best kept."""
    last = "last:1" if dry else "last:4"
    paths = {
        "deterministic (S = 0)": dict(n_samples=0),
        "plain loop": dict(n_samples=N_SAMPLES, batch_samples=False),
        "batch_samples, all modules": dict(n_samples=N_SAMPLES, batch_samples=True),
        "batch_samples, lm_head": dict(n_samples=N_SAMPLES, batch_samples=True, sample_modules="lm_head"),
        f"batch_samples, {last}": dict(n_samples=N_SAMPLES, batch_samples=True, sample_modules=last),
    }
    base = PredictConfig(n_samples=0, batch_size=8 if not dry else 4, seed=0)
    best: dict[str, float] = {}
    for _ in range(2):
        for label, kw in paths.items():
            config = replace(base, **kw)
            sync(device)
            t0 = time.perf_counter()
            blora.predict(test, config)
            sync(device)
            best[label] = min(best.get(label, float("inf")), time.perf_counter() - t0)
    ref = best["deterministic (S = 0)"]
    return [{"path": k, "seconds": v, "over_deterministic": v / ref} for k, v in best.items()]


def check_model(name: str, args, device, folder: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    base, plan_model = build_base(name, device, args.dry_run, folder)
    built = time.perf_counter() - t0
    train, test = examples(16, SEQ_LEN), examples(args.test_examples, SEQ_LEN, seed=1)
    rows, prediction = [], []
    for gc in (False, True):
        for _ in range(args.repeats):  # LoRA and ScalaBL interleaved
            for method in METHODS:
                blora, row = train_setting(base, method, gc, train, args.steps, device, plan_model)
                if method == "scalabl" and not prediction and not row.get("oom"):  # the first that fits
                    prediction = prediction_rows(blora, test, device, args.dry_run)
                base = unwrap(blora)
                rows.append(row)
    ratios = {}
    for gc in (False, True):
        step = {m: [r["step_s"] for r in rows if r["method"] == m and r["gradient_checkpointing"] == gc
                    and "step_s" in r] for m in METHODS}  # fmt: skip
        if all(step.values()):
            ratios[f"gc={gc}"] = min(step["scalabl"]) / min(step["mle"])
    del base
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"model": name, "build_s": built, "training": rows, "scalabl_over_lora": ratios,
            "prediction": prediction, "seconds": time.perf_counter() - t0}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# GPU check",
        "",
        f"{m['device']}; torch {m['torch']}; {'dry run (CPU-sized shapes)' if result['dry_run'] else 'full shapes'}; "
        f"bf16 random weights; rank {RANK} on {', '.join(TARGETS)}; batch {BATCH} x {SEQ_LEN} tokens, "
        f"letter scoring; {result['steps']} steps per setting (first = warm-up). Total {result['seconds']:.0f} s.",
        "",
    ]
    for r in result["models"]:
        if "skipped" in r:
            lines += [f"## {r['model']}", "", f"skipped: {r['skipped']}", ""]
            continue
        lines += [f"## {r['model']} (built in {r['build_s']:.1f} s)", "",
                  "| method | grad. ckpt | step (s) | tokens/s | peak (GB) | plan (GB) | peak / plan |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for t in r["training"]:
            if t.get("oom"):
                lines.append(f"| {t['method']} | {t['gradient_checkpointing']} | OOM | | {t.get('peak_gb', '')} | "
                             f"{t['planned_train_gb']} | |")  # fmt: skip
                continue
            peak = t.get("peak_gb")
            lines.append(
                f"| {t['method']} | {t['gradient_checkpointing']} | {t['step_s']:.3f} | {t['tokens_per_s']:.0f} | "
                f"{'' if peak is None else peak} | {t['planned_train_gb']} | {t.get('peak_over_plan', '')} |"
            )
        ratios = ", ".join(f"{k}: {v:.3f}" for k, v in r["scalabl_over_lora"].items())
        lines += ["", f"ScalaBL / LoRA step time (best of each): {ratios}", ""]
        if r["prediction"]:
            lines += ["| prediction path (ScalaBL) | seconds | / deterministic |", "|---|---|---|"]
            lines += [
                f"| {p['path']} | {p['seconds']:.3f} | {p['over_deterministic']:.2f} |"
                for p in r["prediction"]
            ]
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry-run", action="store_true", help="CPU-sized shapes, on the CPU (a test)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated shipped configs")
    parser.add_argument("--steps", type=int, default=4, help="training steps per setting (first = warm-up)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats of each setting")
    parser.add_argument("--test-examples", type=int, default=16, help="questions per timed prediction")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="start no model after this many seconds"
    )
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps: at least 2 (one warm-up, one timed)")
    if args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        parser.error("no CUDA device: run on the GPU machine, or --dry-run")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    t0 = time.perf_counter()
    models = []
    with tempfile.TemporaryDirectory() as scratch:
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            if time.perf_counter() - t0 > args.budget_s:
                models.append({"model": model, "skipped": f"over the {args.budget_s:.0f} s budget"})
                continue
            models.append(check_model(model, args, device, Path(scratch)))
            print(f"{model}: done at {time.perf_counter() - t0:.0f} s", flush=True)
    result = {
        "dry_run": args.dry_run,
        "steps": args.steps,
        "machine": {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda},
        "models": models,
        "seconds": time.perf_counter() - t0,
    }
    write_json(args.out / "gpu_check.json", result)
    write_text(args.out / "gpu_check.md", markdown(result) + "\n")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
