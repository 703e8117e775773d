"""What reusing the decoding's prompt cache saves in the scoring of generated answers: ScalaBL on
the embedded SmolLM2-135M, SciQ test questions (with their support paragraphs), S = 5 answers beside
the posterior-mean one; ``generate_answers`` with ``reuse_prompts`` on and off, interleaved, the
same questions each time. Prints and writes benchmarks/results/generation_reuse.{json,md}.

    OMP_NUM_THREADS=1 python benchmarks/generation_reuse.py [--questions 32] [--reps 2]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from scalabl.api import BayesianLoRA
from scalabl.config import MethodConfig, RunConfig
from scalabl.config.generate import GenerateConfig
from scalabl.generation import Timing, generate_answers
from scalabl.io import write_json, write_text
from scalabl.runs import load_base

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = RunConfig(task="sciq", method=MethodConfig(method="scalabl", rank=8))
    questions = run.splits().test[: args.questions]
    model, tokenizer = load_base(run)
    blora = BayesianLoRA(model, tokenizer, run.method, seed=0)
    config = GenerateConfig(n_samples=5, max_new_tokens=16, batch_size=16)
    times: dict[bool, list[Timing]] = {True: [], False: []}
    outputs = {}
    for rep in range(args.reps):
        for reuse in (True, False) if rep % 2 == 0 else (False, True):
            timing = Timing()
            outputs[reuse] = generate_answers(blora, questions, config, timing, reuse_prompts=reuse)
            times[reuse].append(timing)
    gap = max(
        float(np.abs(a.loglik - b.loglik).max()) for a, b in zip(outputs[True], outputs[False], strict=True)
    )
    same = all(a.texts == b.texts for a, b in zip(outputs[True], outputs[False], strict=True))

    def med(reuse: bool, part: str) -> float:
        return statistics.median(getattr(t, part) for t in times[reuse])

    rows = {
        reuse: {part: med(reuse, part) for part in ("answer", "samples", "scoring")}
        for reuse in (True, False)
    }
    for r in rows.values():
        r["total"] = r["answer"] + r["samples"] + r["scoring"]
    result = {
        "questions": len(questions),
        "reps": args.reps,
        "seconds": {"reuse": rows[True], "from_scratch": rows[False]},
        "scoring_ratio": rows[True]["scoring"] / rows[False]["scoring"],
        "total_ratio": rows[True]["total"] / rows[False]["total"],
        "max_loglik_gap": gap,
        "same_answers": same,
    }
    lines = [
        "# Scoring generated answers from the decoding's prompt cache",
        "",
        f"ScalaBL (untrained adapter, per-question noise) on the embedded SmolLM2-135M, {len(questions)} SciQ test "
        f"questions, S = 5 answers beside the posterior-mean one, batches of 16, one thread; {args.reps} "
        "interleaved repetitions, medians (seconds). `python benchmarks/generation_reuse.py`.",
        "",
        "| | answer | S answers | scoring | total |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {r['answer']:.1f} | {r['samples']:.1f} | {r['scoring']:.1f} | {r['total']:.1f} |"
            for name, r in (("prompt cache reused", rows[True]), ("prompts run again", rows[False]))
        ),
        "",
        f"Scoring {result['scoring_ratio']:.2f}x the time, the whole generation {result['total_ratio']:.2f}x; "
        f"same answers: {same}; largest log-likelihood difference {gap:.1e} nats.",
        "",
    ]
    write_json(RESULTS / "generation_reuse.json", result)
    write_text(RESULTS / "generation_reuse.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
