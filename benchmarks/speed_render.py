"""The report of benchmarks/speed.py: its result dict as markdown tables and sentences."""

from __future__ import annotations

from typing import Any

from speed_measure import MB, METHODS, PAIRS

from scalabl.tables import markdown_table


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
        "Module-subset path: `PredictConfig.sample_modules`"
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
