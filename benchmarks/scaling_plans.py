"""Plans (scalabl plan) for the shipped 7B-32B configs: ScalaBL r = 8 on q/v, bf16 and 4-bit, with and
without gradient checkpointing, batch 4 x 256 tokens, S = 10 batched at inference.

    python benchmarks/scaling_plans.py

Writes benchmarks/results/scaling_plans.json and .md (the table in docs/scaling.md).
"""

from __future__ import annotations

from pathlib import Path

from scalabl.io import write_json, write_text
from scalabl.plan import SHIPPED, make_plan
from scalabl.tables import markdown_table

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    rows, raw = [], []
    for model in SHIPPED:
        for quant in (None, "4bit"):
            for ckpt in (False, True):
                plan = make_plan(model, method="scalabl", quant=quant, gradient_checkpointing=ckpt)
                raw.append(plan.to_dict())
                m = plan.memory_gb
                rows.append(
                    {
                        "model": model,
                        "weights": "4-bit" if quant else "bf16",
                        "ckpt": "yes" if ckpt else "no",
                        "base": plan.base_parameters / 1e9,
                        "lora": plan.lora_parameters,
                        "extra": plan.extra_parameters,
                        "train": m["train_total"],
                        "infer": m["inference_total"],
                        "fits": "yes" if m["train_total"] <= 78 else "no",
                    }
                )
    write_json(RESULTS / "scaling_plans.json", raw)
    table = markdown_table(
        rows,
        ["model", "weights", "ckpt", "base", "lora", "extra", "train", "infer", "fits"],
        {
            "weights": "base weights",
            "ckpt": "grad. ckpt",
            "base": "base params (B)",
            "lora": "LoRA params",
            "extra": "ScalaBL extra",
            "train": "train (GB)",
            "infer": "inference S=10 (GB)",
            "fits": "training fits 80 GB",
        },
        {"base": "{:.2f}", "lora": "{:,}", "extra": "{:,}", "train": "{:.1f}", "infer": "{:.1f}"},
    )
    text = (
        "# Plans for 7B-32B models (ScalaBL, r = 8 on q_proj/v_proj)\n\n"
        "`python benchmarks/scaling_plans.py`: `scalabl plan` on the shipped configs, batch 4 x 256 tokens, "
        "32 answer tokens per example, S = 10 posterior samples batched at inference. 'Fits' leaves 2 GB of "
        "an 80 GB GPU for the CUDA context.\n\n" + table + "\n"
    )
    write_text(RESULTS / "scaling_plans.md", text)
    print(text)


if __name__ == "__main__":
    main()
