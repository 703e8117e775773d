"""Plots: PNG files written atomically, reliability, training curves, the posterior per module."""

from __future__ import annotations

import pytest
import torch

from scalabl.plots import plot_reliability, plot_training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    # atomic_path must have renamed its temp file away.
    assert not list(path.parent.glob(".*.tmp"))


def _curve(seed: int, sharpen: float):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(sharpen * torch.randn(300, 4, generator=g, dtype=torch.float64), dim=1)
    return probs, torch.randint(0, 4, (300,), generator=g)


def test_plot_reliability_writes_png(tmp_path):
    path = tmp_path / "sub" / "reliability.png"
    plot_reliability({"lora": _curve(0, 3.0), "scalabl": _curve(1, 1.0)}, path, n_bins=10, title="test")
    assert_png(path)


def test_plot_reliability_single_model_with_empty_bins(tmp_path):
    path = tmp_path / "one.png"
    plot_reliability({"onehot": (torch.eye(3, dtype=torch.float64), torch.tensor([0, 1, 2]))}, path)
    assert_png(path)


def test_plot_reliability_rejects_empty(tmp_path):
    with pytest.raises(ValueError):
        plot_reliability({}, tmp_path / "x.png")


def test_plot_training_curves_writes_png(tmp_path):
    histories = {
        "a": [{"step": s, "loss": 1.0 / (s + 1), "kl": 0.1 * s} for s in range(10)],
        # run b never logs "kl", and logs eval_loss only on some steps
        "b": [
            {"step": s, "loss": 2.0 / (s + 1)} | ({"eval_loss": 0.5} if s % 3 == 0 else {}) for s in range(10)
        ],
    }
    path = tmp_path / "curves.png"
    plot_training_curves(histories, path, keys=("loss", "kl", "eval_loss", "absent"))
    assert_png(path)


def test_plot_training_curves_no_keys_found(tmp_path):
    with pytest.raises(ValueError, match="none of the keys"):
        plot_training_curves({"a": [{"step": 0, "loss": 1.0}]}, tmp_path / "x.png", keys=("acc",))
    assert not (tmp_path / "x.png").exists()


def test_module_label_reads_layer_and_kind():
    from scalabl.plots import module_label

    assert module_label("base_model.model.model.layers.12.self_attn.q_proj.lora_A.default") == (12, "q_proj")
    assert module_label("base_model.model.transformer.h.3.attn.c_attn.lora_A.default") == (3, "c_attn")
    assert module_label("base_model.model.lm_head.lora_A.default") == (None, "lm_head")


def test_plot_posterior_modules_writes_png_and_needs_module_stats(tmp_path):
    from scalabl.plots import plot_posterior_modules

    names = [f"m.layers.{i}.self_attn.{k}.lora_A.default" for i in range(3) for k in ("q_proj", "v_proj")]
    names.append("m.lm_head.lora_A.default")
    history = [
        {
            "step": s,
            "nll": 1.0,
            "modules": {n: {"sigma": 0.05 * s, "mu": 0.5, "sigma_over_mu": 0.1 * s} for n in names},
        }
        for s in range(1, 5)
    ]
    path = tmp_path / "post.png"
    plot_posterior_modules(history, path)
    assert_png(path)
    with pytest.raises(ValueError, match="per-module"):
        plot_posterior_modules([{"step": 1, "nll": 1.0}], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_active_curves_draw_runs_and_seed_bands(tmp_path):
    from scalabl.plots import plot_active_curves

    def run(acc):
        return [
            {"n_labels": n, "metrics": {"acc": a, "nll": 1.0 - a}}
            for n, a in zip((4, 8, 12), acc, strict=True)
        ]

    path = tmp_path / "curve.png"
    plot_active_curves(
        {"bald": [run((0.3, 0.4, 0.5)), run((0.35, 0.45, 0.5))], "random": run((0.3, 0.3, 0.4))}, path
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
