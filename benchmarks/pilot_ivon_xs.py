"""Learning-rate pilot for ivon and blora_xs in the regime suite (issue 23): 40 steps of batch 4 on
64 ARC-Easy training questions, seed 0, with the 32-question validation curve every 20 steps.

    OMP_NUM_THREADS=1 python benchmarks/pilot_ivon_xs.py ivon 2.0
    OMP_NUM_THREADS=1 python benchmarks/pilot_ivon_xs.py blora_xs 0.002

Prints the method, the learning rate (ivon: --ivon-lr; blora_xs: AdamW's --lr), seconds per step
and (step, training NLL, validation NLL, validation accuracy) per logged step.
"""

from __future__ import annotations

import sys
import time

import torch

from scalabl.api import BayesianLoRA
from scalabl.config import MethodConfig, RunConfig, TrainConfig
from scalabl.runs import load_base


def main(method: str, lr: float) -> None:
    torch.set_num_threads(1)
    run = RunConfig(task="arc_easy", max_train=64)
    splits = run.splits()
    model, tokenizer = load_base(run)
    extra = {"ivon_lr": lr} if method == "ivon" else {}
    blora = BayesianLoRA(model, tokenizer, MethodConfig(method=method, rank=8, **extra), seed=0)
    train = {
        "steps": 40,
        "batch_size": 4,
        "log_every": 10,
        "val_size": 32,
        "val_every": 20,
        "checkpoint_every": 0,
    }
    if method != "ivon":
        train["lr"] = lr
    t0 = time.time()
    history = blora.fit(splits.train, TrainConfig(**train), progress=False, validation=splits.validation)
    rows = [
        (
            r["step"],
            round(r["nll"], 3),
            round(r.get("val_nll", float("nan")), 3),
            round(r.get("val_acc", float("nan")), 3),
        )
        for r in history
    ]
    print(method, lr, "sec/step", (time.time() - t0) / 40, rows, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
