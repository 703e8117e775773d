"""benchmarks/gpu_check.py's dry run: every code path of the GPU check (build, LoRA and ScalaBL training
with and without checkpointing, the plan comparison, every prediction path) on CPU-sized shapes of
the shipped Qwen2.5-7B, 14B and 32B configs, writing its JSON and markdown."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dry_run_measures_every_setting(tmp_path):
    gpu_check = load_script()
    result = gpu_check.main([str(tmp_path), "--dry-run", "--steps", "2", "--test-examples", "2"])
    assert [m["model"] for m in result["models"]] == list(gpu_check.MODELS)
    for model in result["models"]:
        settings = {(r["method"], r["gradient_checkpointing"]) for r in model["training"]}
        assert settings == {(m, gc) for m in gpu_check.METHODS for gc in (False, True)}
        for row in model["training"]:
            assert row["step_s"] > 0 and row["tokens_per_s"] > 0 and row["planned_train_gb"] > 0
            assert "peak_gb" not in row  # no CUDA, no peak
        scalabl = next(r for r in model["training"] if r["method"] == "scalabl")
        n_modules = 2 * 2 + 1  # q and v in 2 layers, and lm_head
        assert scalabl["extra_parameters"] == 2 * gpu_check.RANK * n_modules
        assert set(model["scalabl_over_lora"]) == {"gc=False", "gc=True"}
        paths = [p["path"] for p in model["prediction"]]
        assert paths[0] == "deterministic (S = 0)" and len(paths) == 5
        assert model["prediction"][0]["over_deterministic"] == 1.0
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["dry_run"] is True
    md = (tmp_path / "gpu_check.md").read_text()
    assert "## qwen2.5-32b" in md and "batch_samples, lm_head" in md


def test_the_prompts_are_the_planned_length():
    gpu_check = load_script()
    from scalabl.scoring import Scorer
    from scalabl.testing import make_byte_tokenizer

    scorer = Scorer(make_byte_tokenizer(), "letter", max_length=gpu_check.SEQ_LEN)
    lengths = [len(scorer.encode(e).prompt) for e in gpu_check.examples(4, gpu_check.SEQ_LEN)]
    assert all(gpu_check.SEQ_LEN - 10 <= n <= gpu_check.SEQ_LEN for n in lengths), lengths
