"""The lm-evaluation-harness model against the harness's own Hugging Face model, on the embedded
SmolLM2-135M-Instruct: the same multiple-choice requests (ARC-Easy questions, each choice a
``loglikelihood`` request), timed interleaved in one run.

    python benchmarks/harness.py RUN_DIR [--questions 40] [--rounds 2]

RUN_DIR is any scalabl run on the embedded model (``scalabl train --task arc_easy ...``). Rows:
``hf`` (``--model hf`` on the merged posterior-mean weights: every request runs context +
continuation), ``scalabl S=0`` (the posterior mean; a question's choices share one pass over its
context) and ``scalabl S=4`` (4 posterior samples + the mean's pass for ``is_greedy``). Writes
benchmarks/results/harness.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from peft import PeftModel

from scalabl.export import export_peft
from scalabl.harness import ScalaBLLM
from scalabl.io import write_json, write_text
from scalabl.run_folder import RunFolder
from scalabl.runs import load_base
from scalabl.tasks import get_task

RESULTS = Path(__file__).parent / "results"


def requests(n: int) -> list[Instance]:
    out = []
    for q in get_task("arc_easy").offline()[:n]:
        context = f"Question: {q.question}\nAnswer:"
        out += [Instance("loglikelihood", {}, (context, " " + c), len(out)) for c in q.choices]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    reqs = requests(args.questions)
    models = {"scalabl S=0": ScalaBLLM(run=args.run_dir, n_samples=0, batch_size=8)}
    models["scalabl S=4"] = ScalaBLLM(run=args.run_dir, n_samples=4, batch_size=8)
    mean = models["scalabl S=0"]
    with tempfile.TemporaryDirectory() as folder:
        config = mean.blora.config
        export_peft(mean.blora, Path(folder) / "peft", base_model="embedded")
        base, tokenizer = load_base(RunFolder(args.run_dir).read_config())
        merged = PeftModel.from_pretrained(base, Path(folder) / "peft").merge_and_unload().eval()
    models = {"hf": HFLM(pretrained=merged, tokenizer=tokenizer, batch_size=8, device="cpu"), **models}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    answers = {}
    for _ in range(args.rounds):  # interleaved: each round times every model once
        for name, lm in models.items():
            t0 = time.perf_counter()
            answers[name] = lm.loglikelihood(reqs, disable_tqdm=True)
            seconds[name].append(time.perf_counter() - t0)
    best = {name: min(s) for name, s in seconds.items()}
    gap = max(abs(a[0] - b[0]) for a, b in zip(answers["hf"], answers["scalabl S=0"], strict=True))
    same_greedy = sum(a[1] == b[1] for a, b in zip(answers["hf"], answers["scalabl S=0"], strict=True))
    figures = {
        "questions": args.questions,
        "requests": len(reqs),
        "method": config.method.value,
        "seconds": seconds,
        "best_seconds": best,
        "ratio_vs_hf": {name: best[name] / best["hf"] for name in models},
        "max_abs_loglik_gap_s0_vs_hf": gap,
        "is_greedy_agreement": f"{same_greedy}/{len(reqs)}",
    }
    lines = [
        "# The harness model against `--model hf` (embedded SmolLM2-135M-Instruct)",
        "",
        f"{len(reqs)} `loglikelihood` requests ({args.questions} ARC-Easy questions x their choices), "
        f"batch 8, one CPU thread, best of {args.rounds} interleaved rounds; `python benchmarks/harness.py RUN_DIR`.",
        "",
        "| model | seconds | vs hf |",
        "|---|---|---|",
        *[f"| {name} | {best[name]:.1f} | {best[name] / best['hf']:.2f}x |" for name in models],
        "",
        f"Largest |log-likelihood| gap between `scalabl S=0` and `hf`: {gap:.2e}; `is_greedy` agrees on "
        f"{same_greedy}/{len(reqs)} requests.",
    ]
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "harness.json", figures)
    write_text(RESULTS / "harness.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
