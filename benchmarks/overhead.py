"""What ScalaBL costs over plain LoRA: training step time (ratio) and extra parameters.

Step time: the embedded SmolLM2-135M-Instruct with LoRA r=8 on q_proj/v_proj, one ARC-Easy batch,
ScalaBL and plain LoRA steps interleaved (A B A B ...) so that machine noise hits both alike; the
figure is the ratio of the medians. Parameters: counted on SmolLM2 and on the Llama-2-7B shape,
built on the meta device from the config shipped in the package (no weights, no download).

    python benchmarks/overhead.py [--repeats 10] [--batch-size 4]

Writes benchmarks/results/overhead.json and overhead.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from importlib.resources import files
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from scalabl.data import load_splits
from scalabl.io import write_json, write_text
from scalabl.methods import MethodConfig, get_method
from scalabl.models import load_model
from scalabl.scoring import Scorer
from scalabl.tables import markdown_table

RESULTS = Path(__file__).parent / "results"


def count_extra(config_or_model, targets: tuple[str, ...], rank: int = 8) -> tuple[int, int]:
    """(extra ScalaBL parameters, LoRA parameters) for a model built on the meta device."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config_or_model)
    method = get_method(MethodConfig(method="scalabl", rank=rank, target_modules=targets))
    wrapped = method.wrap(model)
    lora = sum(p.numel() for n, p in wrapped.named_parameters() if "lora_" in n and "log_" not in n)
    return method.extra_parameters(wrapped), lora


def llama2_7b_config():
    raw = json.loads(files("scalabl").joinpath("model_configs/llama-2-7b.json").read_text())
    raw.pop("_comment", None)
    return AutoConfig.for_model(**raw)


def time_steps(repeats: int, batch_size: int) -> dict[str, list[float]]:
    batch = load_splits("arc_easy").train[:batch_size]
    labels = torch.tensor([e.label for e in batch])
    setups = {}
    for name in ("mle", "scalabl"):
        model, tokenizer = load_model()
        torch.manual_seed(0)
        wrapped = get_method(MethodConfig(method=name)).wrap(model)
        wrapped.train()
        opt = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-4)
        setups[name] = (wrapped, Scorer(tokenizer), opt)

    def step(name: str) -> float:
        wrapped, scorer, opt = setups[name]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(scorer.class_logits(wrapped, batch, sample=True), labels)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    for name in setups:  # warm-up: tokenisation caches, allocator
        step(name)
    times: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(repeats):
        for name in setups:
            times[name].append(step(name))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    times = time_steps(args.repeats, args.batch_size)
    med = {k: statistics.median(v) for k, v in times.items()}
    smol_model, _ = load_model()
    smol_extra, smol_lora = count_extra(smol_model.config, ("q_proj", "v_proj"))
    llama_cfg = llama2_7b_config()
    llama_extra, llama_lora = count_extra(llama_cfg, ("q_proj", "v_proj", "lm_head"))
    llama_qv_extra, _ = count_extra(llama_cfg, ("q_proj", "v_proj"))

    result = {
        "machine": {
            "cpus": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "step_time": {
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "median_seconds": med,
            "all_seconds": times,
            "ratio_scalabl_over_lora": med["scalabl"] / med["mle"],
        },
        "parameters": {
            "smollm2_135m_qv_r8": {"extra": smol_extra, "lora": smol_lora},
            "llama2_7b_qv_lm_head_r8": {"extra": llama_extra, "lora": llama_lora},
            "llama2_7b_qv_r8": {"extra": llama_qv_extra},
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "overhead.json", result)
    rows = [
        {"what": "step time, plain LoRA (median s)", "value": f"{med['mle']:.3f}"},
        {"what": "step time, ScalaBL (median s)", "value": f"{med['scalabl']:.3f}"},
        {"what": "ratio ScalaBL / LoRA", "value": f"{med['scalabl'] / med['mle']:.3f}"},
        {"what": "extra parameters, SmolLM2-135M, r=8, q_proj+v_proj", "value": f"{smol_extra:,}"},
        {"what": "extra parameters, Llama-2-7B, r=8, q_proj+v_proj", "value": f"{llama_qv_extra:,}"},
        {"what": "extra parameters, Llama-2-7B, r=8, q_proj+v_proj+lm_head", "value": f"{llama_extra:,}"},
        {"what": "LoRA parameters, Llama-2-7B, r=8, q_proj+v_proj+lm_head", "value": f"{llama_lora:,}"},
    ]
    table = markdown_table(rows, ["what", "value"])
    text = (
        "# ScalaBL overhead over plain LoRA\n\n"
        f"`python benchmarks/overhead.py --repeats {args.repeats} --batch-size {args.batch_size}`: "
        f"embedded SmolLM2-135M-Instruct, ARC-Easy batch of {args.batch_size} (continuation scoring), "
        f"{args.repeats} interleaved steps each, {torch.get_num_threads()} CPU threads.\n\n{table}\n"
    )
    write_text(RESULTS / "overhead.md", text)
    print(text)


if __name__ == "__main__":
    main()
