"""What ScalaBL and its variants cost over plain LoRA: training step time (ratio) and extra parameters.

Step time: the embedded SmolLM2-135M-Instruct with LoRA r=8 on q_proj/v_proj, one ARC-Easy batch,
a step = forward, NLL + KL / N, backward, AdamW; plain LoRA, ScalaBL and each variant of ScalaBL
(:data:`SETUPS`) interleaved, the order rotated every round, so that machine noise hits all alike;
the figures are ratios of the medians. Parameters: counted on SmolLM2 and on the Llama-2-7B shape,
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

from scalabl.bayesian import total_kl, variational_parameters
from scalabl.data import load_splits
from scalabl.io import write_json, write_text
from scalabl.methods import MethodConfig, get_method
from scalabl.models import load_model
from scalabl.scoring import Scorer
from scalabl.tables import markdown_table

RESULTS = Path(__file__).parent / "results"
# what is timed: label -> method options (plain LoRA is the reference)
SETUPS: dict[str, dict[str, str]] = {
    "LoRA": {"method": "mle"},
    "ScalaBL": {"method": "scalabl"},
    "ScalaBL, full covariance": {"method": "scalabl", "covariance": "full"},
    "ScalaBL, noise shared per layer": {"method": "scalabl", "noise_sharing": "layer"},
    "ScalaBL, noise shared by the adapter": {"method": "scalabl", "noise_sharing": "adapter"},
    "ScalaBL, empirical-Bayes prior (model)": {"method": "scalabl", "prior_fit": "model"},
}
N_TRAIN = 64  # the KL's divisor: the regime suite's training set


def count_extra(
    config_or_model, targets: tuple[str, ...], rank: int = 8, options: dict[str, str] | None = None
) -> tuple[int, int]:
    """(extra parameters of ScalaBL with ``options``, LoRA parameters) for a model on the meta device."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config_or_model)
    options = options or {"method": "scalabl"}
    method = get_method(MethodConfig(**options, rank=rank, target_modules=targets))
    wrapped = method.wrap(model)
    variational = {id(p) for p in variational_parameters(wrapped)}  # the posterior's, beyond LoRA
    lora = sum(p.numel() for n, p in wrapped.named_parameters() if "lora_" in n and id(p) not in variational)
    return method.extra_parameters(wrapped), lora


def llama2_7b_config():
    raw = json.loads(files("scalabl").joinpath("model_configs/llama-2-7b.json").read_text())
    raw.pop("_comment", None)
    return AutoConfig.for_model(**raw)


def time_steps(repeats: int, batch_size: int) -> dict[str, list[float]]:
    batch = load_splits("arc_easy").train[:batch_size]
    labels = torch.tensor([e.label for e in batch])
    setups = {}
    for label, options in SETUPS.items():
        model, tokenizer = load_model()
        torch.manual_seed(0)
        wrapped = get_method(MethodConfig(**options)).wrap(model)
        wrapped.train()
        opt = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-4)
        setups[label] = (wrapped, Scorer(tokenizer), opt)

    def step(label: str) -> float:
        wrapped, scorer, opt = setups[label]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        nll = F.cross_entropy(scorer.class_logits(wrapped, batch, sample=True), labels)
        (nll + total_kl(wrapped) / N_TRAIN).backward()
        opt.step()
        return time.perf_counter() - t0

    for label in setups:  # warm-up: tokenisation caches, allocator
        step(label)
    times: dict[str, list[float]] = {label: [] for label in setups}
    labels_in_order = list(setups)
    for rep in range(repeats):
        k = rep % len(labels_in_order)
        for label in labels_in_order[k:] + labels_in_order[:k]:
            times[label].append(step(label))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    times = time_steps(args.repeats, args.batch_size)
    med = {k: statistics.median(v) for k, v in times.items()}
    smol_model, _ = load_model()
    llama_cfg = llama2_7b_config()
    smol_extra, smol_lora = count_extra(smol_model.config, ("q_proj", "v_proj"))
    llama_extra, llama_lora = count_extra(llama_cfg, ("q_proj", "v_proj", "lm_head"))
    llama_qv_extra, _ = count_extra(llama_cfg, ("q_proj", "v_proj"))
    variants = {
        label: {
            "median_seconds": med[label],
            "ratio_over_lora": med[label] / med["LoRA"],
            "extra_smollm2_qv_r8": count_extra(smol_model.config, ("q_proj", "v_proj"), options=o)[0]
            if o["method"] == "scalabl"
            else 0,
            "extra_llama2_7b_qv_lm_head_r8": count_extra(
                llama_cfg, ("q_proj", "v_proj", "lm_head"), options=o
            )[0]
            if o["method"] == "scalabl"
            else 0,
        }
        for label, o in SETUPS.items()
    }

    result = {
        "machine": {
            "cpus": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "step_time": {
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "n_train_for_kl": N_TRAIN,
            "median_seconds": med,
            "all_seconds": times,
            "ratio_scalabl_over_lora": med["ScalaBL"] / med["LoRA"],
        },
        "variants": variants,
        "parameters": {
            "smollm2_135m_qv_r8": {"extra": smol_extra, "lora": smol_lora},
            "llama2_7b_qv_lm_head_r8": {"extra": llama_extra, "lora": llama_lora},
            "llama2_7b_qv_r8": {"extra": llama_qv_extra},
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "overhead.json", result)
    rows = [
        {
            "method": label,
            "step (median s)": f"{v['median_seconds']:.3f}",
            "ratio / LoRA": f"{v['ratio_over_lora']:.3f}",
            "extra params, SmolLM2 q,v": f"{v['extra_smollm2_qv_r8']:,}",
            "extra params, Llama-2-7B q,v,lm_head": f"{v['extra_llama2_7b_qv_lm_head_r8']:,}",
        }
        for label, v in variants.items()
    ]
    totals = [
        {
            "what": "extra parameters, Llama-2-7B, r=8, q_proj+v_proj (ScalaBL)",
            "value": f"{llama_qv_extra:,}",
        },
        {"what": "LoRA parameters, SmolLM2-135M, r=8, q_proj+v_proj", "value": f"{smol_lora:,}"},
        {"what": "LoRA parameters, Llama-2-7B, r=8, q_proj+v_proj+lm_head", "value": f"{llama_lora:,}"},
    ]
    text = (
        "# ScalaBL and its variants: overhead over plain LoRA\n\n"
        f"`python benchmarks/overhead.py --repeats {args.repeats} --batch-size {args.batch_size}`: "
        f"embedded SmolLM2-135M-Instruct, ARC-Easy batch of {args.batch_size} (continuation scoring), "
        f"a step = NLL + KL / {N_TRAIN}, backward, AdamW; {args.repeats} interleaved steps each (order "
        f"rotated every round), {torch.get_num_threads()} CPU threads.\n\n"
        f"{markdown_table(rows, list(rows[0]))}\n\n{markdown_table(totals, ['what', 'value'])}\n"
    )
    write_text(RESULTS / "overhead.md", text)
    print(text)


if __name__ == "__main__":
    main()
