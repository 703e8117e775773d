"""Serving throughput and latency against concurrency, with and without micro-batching, on the
embedded model; and the ratio of served to offline (`scalabl predict`) throughput.

A run folder is trained once (ScalaBL, a few steps: the weights do not matter for speed) under
--run. Offline throughput: the run's answerer on the questions in one process. Served: `scalabl
serve` started on a free loopback port for each setting (micro-batching on: --max-batch 16
--max-wait-ms 10; off: --max-batch 1 --max-wait-ms 0), then every question sent as its own request
by C concurrent clients (bounded: each question once), for each C. The offline pass and the
served settings alternate in one run, so machine noise hits all alike.

    python benchmarks/serve.py [--questions 32] [--n-samples 2] [--concurrency 1,4,16]

Writes benchmarks/results/serve.json and serve.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from scalabl.answers import load_answerer
from scalabl.config import MethodConfig, RunConfig, TrainConfig
from scalabl.data import load_splits
from scalabl.io import write_json, write_text
from scalabl.runs import train_run
from scalabl.tables import markdown_table

RESULTS = Path(__file__).parent / "results"
MODES = {
    "micro-batching": ["--max-batch", "16", "--max-wait-ms", "10"],
    "one at a time": ["--max-batch", "1", "--max-wait-ms", "0"],
}


def ensure_run(path: Path) -> Path:
    if not (path / "metrics.json").is_file():
        config = RunConfig(
            task="arc_easy",
            max_train=16,
            max_test=8,
            n_samples=(2,),
            method=MethodConfig(method="scalabl"),
            train=TrainConfig(steps=4, batch_size=4, val_size=0, checkpoint_every=0),
        )
        train_run(config, path, progress=False, overwrite=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, question: dict) -> tuple[int, float]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request(
            "POST", "/v1/predict", json.dumps(question).encode(), {"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - t0
    finally:
        conn.close()


def served(
    run: Path, flags: list[str], questions: list[dict], concurrency: list[int], n_samples: int
) -> dict:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "scalabl",
        "serve",
        str(run),
        "--port",
        str(port),
        "--no-auth",
        "--n-samples",
        str(n_samples),
        "--queue-size",
        "1024",
        *flags,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(
                        f"server did not start: {proc.stderr.read() if proc.poll() is not None else ''}"
                    ) from None
                time.sleep(0.5)
        post(port, questions[0])  # warm-up
        out = {}
        for c in concurrency:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=c) as pool:
                results = list(pool.map(lambda q: post(port, q), questions))
            wall = time.perf_counter() - t0
            latencies = sorted(t for _, t in results)
            out[c] = {
                "throughput_qps": len(questions) / wall,
                "p50_s": statistics.median(latencies),
                "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
                "errors": sum(status != 200 for status, _ in results),
            }
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--n-samples", type=int, default=2)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--run", type=Path, default=Path("runs/serve_bench"))
    args = parser.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(",")]
    run = ensure_run(args.run)
    pool = load_splits("arc_easy").test[: args.questions]
    questions = [{"id": e.id, "question": e.question, "choices": list(e.choices)} for e in pool]

    answerer, _ = load_answerer(run, n_samples=args.n_samples, batch_size=16)
    answerer.answer(pool[:2])  # warm-up: tokenisation caches, allocator
    offline_rates, results = [], {mode: [] for mode in MODES}
    for _ in range(2):  # offline and each served mode alternate, twice
        t0 = time.perf_counter()
        answerer.answer(pool)
        offline_rates.append(len(pool) / (time.perf_counter() - t0))
        for mode, flags in MODES.items():
            results[mode].append(served(run, flags, questions, concurrency, args.n_samples))
    offline = statistics.median(offline_rates)
    summary = {
        mode: {
            c: {
                key: statistics.median(r[c][key] for r in runs)
                for key in ("throughput_qps", "p50_s", "p99_s")
            }
            | {
                "errors": sum(r[c]["errors"] for r in runs),
                "ratio_to_offline": statistics.median(r[c]["throughput_qps"] for r in runs) / offline,
            }
            for c in concurrency
        }
        for mode, runs in results.items()
    }
    result = {
        "machine": {"threads": torch.get_num_threads()},
        "questions": args.questions,
        "n_samples": args.n_samples,
        "offline_qps": offline,
        "offline_qps_all": offline_rates,
        "served": summary,
        "all": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "serve.json", result)
    rows = [
        {
            "mode": mode,
            "clients": c,
            "q/s": v["throughput_qps"],
            "p50 (s)": v["p50_s"],
            "p99 (s)": v["p99_s"],
            "served / offline": v["ratio_to_offline"],
            "errors": v["errors"],
        }
        for mode, per_c in summary.items()
        for c, v in per_c.items()
    ]
    text = (
        "# Serving: throughput and latency against concurrency\n\n"
        f"`python benchmarks/serve.py --questions {args.questions} --n-samples {args.n_samples} "
        f"--concurrency {args.concurrency}`: embedded SmolLM2-135M-Instruct, ScalaBL, S = {args.n_samples}, "
        f"{args.questions} ARC-Easy test questions, one request each; offline `predict` throughput "
        f"{offline:.2f} q/s (median of 2, alternated with the served runs).\n\n"
        + markdown_table(
            rows,
            list(rows[0]),
            floatfmt={
                "q/s": "{:.2f}",
                "p50 (s)": "{:.2f}",
                "p99 (s)": "{:.2f}",
                "served / offline": "{:.2f}",
            },
        )
    )
    write_text(RESULTS / "serve.md", text)
    print(text)


if __name__ == "__main__":
    main()
