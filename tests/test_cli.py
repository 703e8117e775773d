"""The command line: train and evaluate on a tiny local model, --help, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import QUANT_HIDDEN, save_tiny_model
from safetensors.torch import load_file

from scalabl import cli
from scalabl.cli import build_parser, main
from scalabl.config import MethodConfig, RunConfig, TrainConfig
from scalabl.config.flags import flag_name, options
from scalabl.methods import METHODS
from scalabl.run_folder import RUN_FILES
from scalabl.tasks import TASK_NAMES as TASKS


def run(argv: list[str]) -> int:
    """main()'s exit code, whether it returns it or argparse raises SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def train_argv(model_dir: Path, out: Path, method: str = "scalabl", **extra: str) -> list[str]:
    argv = [
        "train",
        "--model",
        str(model_dir),
        "--task",
        "arc_easy",
        "--method",
        method,
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--max-train",
        "8",
        "--max-test",
        "6",
        "--n-samples",
        "2,0",
        "--rank",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    for flag, value in extra.items():
        argv += [f"--{flag.replace('_', '-')}", value]
    return argv


@pytest.fixture(scope="module", params=["scalabl", "mle"])
def cli_run(request, model_dir, tmp_path_factory) -> dict:
    """`scalabl train` then `scalabl evaluate --n-samples 3` on one run folder; records both stages."""
    method = request.param
    out = tmp_path_factory.mktemp("cli-runs") / f"{method}-run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        train_rc = run(train_argv(model_dir, out, method))
        after_train = {
            "files": {p.name for p in out.iterdir()},
            "metrics": json.loads((out / "metrics.json").read_text()),
            "predictions": load_file(str(out / "predictions.safetensors")),
            "history": (out / "history.jsonl").read_text().splitlines(),
        }
        eval_rc = run(["evaluate", str(out), "--n-samples", "3", "--quiet"])
        after_eval = {
            "metrics": json.loads((out / "metrics.json").read_text()),
            "predictions": load_file(str(out / "predictions.safetensors")),
            "report": (out / "report.md").read_text(),
        }
    return {
        "method": method,
        "out": out,
        "train_rc": train_rc,
        "eval_rc": eval_rc,
        "train": after_train,
        "eval": after_eval,
    }


# ---- train / evaluate ----------------------------------------------------------------------------
def test_train_writes_the_run_folder(cli_run):
    assert cli_run["train_rc"] == 0
    t = cli_run["train"]
    assert t["files"] >= set(RUN_FILES)
    m = t["metrics"]
    expected = {"S=2", "S=0"} if cli_run["method"] == "scalabl" else {"S=0"}
    assert set(m["eval"]) == expected
    assert m["method"] == cli_run["method"]
    assert m["n_test"] == 6 and m["n_train"] == 8 and m["train_steps"] == 3
    assert m["extra_parameters"] == (2 * 2 * 4 if cli_run["method"] == "scalabl" else 0)
    assert set(t["predictions"]) == {"labels"} | {f"log_probs_{k.replace('=', '')}" for k in expected}
    assert len(t["history"]) == 1  # 3 steps, logged every 10 and at the last step
    assert json.loads(t["history"][0])["step"] == 3

    config = json.loads((cli_run["out"] / "config.json").read_text())
    assert config["method"]["method"] == cli_run["method"]
    assert config["method"]["rank"] == 2
    assert config["train"]["steps"] == 3 and config["train"]["batch_size"] == 2
    assert config["max_train"] == 8 and config["max_test"] == 6 and config["n_samples"] == [2, 0]


def test_evaluate_rewrites_metrics(cli_run):
    assert cli_run["eval_rc"] == 0
    m = cli_run["eval"]["metrics"]
    expected = {"S=3"} if cli_run["method"] == "scalabl" else {"S=0"}  # deterministic: S=0 only
    assert set(m["eval"]) == expected
    assert set(cli_run["eval"]["predictions"]) == {"labels"} | {
        f"log_probs_{k.replace('=', '')}" for k in expected
    }
    # training-time fields survive the rewrite
    before = cli_run["train"]["metrics"]
    for key in ("n_train", "train_seconds", "final_train_nll", "lora_parameters", "extra_parameters"):
        assert m[key] == before[key]
    if cli_run["method"] == "mle":  # the same adapter, re-loaded, predicts the same
        assert m["eval"]["S=0"]["nll"] == pytest.approx(before["eval"]["S=0"]["nll"], rel=1e-12)
        assert m["eval"]["S=0"]["acc"] == before["eval"]["S=0"]["acc"]
    key = next(iter(expected))
    assert f"| {key.split('=')[1]} |" in cli_run["eval"]["report"]


def test_train_prints_the_table(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = train_argv(model_dir, out, "mle")
    argv[argv.index("--steps") + 1] = "1"
    argv[argv.index("--max-test") + 1] = "2"
    assert run(argv) == 0
    printed = capsys.readouterr().out
    assert "| mle |" in printed and "ECE (%)" in printed and str(out) in printed


# ---- --help --------------------------------------------------------------------------------------
HELP_OPTIONS = {
    "train": [flag_name(f) for cls in (RunConfig, MethodConfig, TrainConfig) for f in options(cls)]
    + [
        "--targets",
        "--length-norm",
        "--n-samples",
        "--config",
        "--out",
        "--overwrite",
        "--resume",
        "--quiet",
    ],
    "evaluate": ["run_dir", "--n-samples", "--max-test", "--quiet"],
    "demo": ["--out", "--quick", "--quiet"],
}


@pytest.mark.parametrize("command", sorted(HELP_OPTIONS))
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: scalabl {command}" in text
    for option in HELP_OPTIONS[command]:
        assert option in text, option


def test_top_level_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for command in HELP_OPTIONS:
        assert command in text


def test_method_and_task_help_list_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in (*METHODS, *TASKS):
        assert name in text


# ---- bad input -----------------------------------------------------------------------------------
def test_unknown_method(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(train_argv(model_dir, out, "nope")) == 2
    err = capsys.readouterr().err
    assert "nope" in err
    for name in METHODS:
        assert name in err
    assert not out.exists()


def test_unknown_task(model_dir, tmp_path, capsys):
    argv = train_argv(model_dir, tmp_path / "run")
    argv[argv.index("--task") + 1] = "nope"
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert "nope" in err
    for name in TASKS:
        assert name in err


def test_missing_model_folder(tmp_path, capsys):
    argv = train_argv(Path("/nonexistent/folder"), tmp_path / "run")
    code = run(argv)
    assert code != 0
    err = capsys.readouterr().err
    assert "error" in err and "/nonexistent/folder" in err
    assert "Traceback" not in err


def test_unwritable_out_fails_before_training(model_dir, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    loaded = []
    monkeypatch.setattr("scalabl.runs.load_model", lambda *a, **k: loaded.append(a) or pytest.fail("loaded"))
    assert run(train_argv(model_dir, blocker / "run")) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and str(blocker / "run") in err
    assert loaded == []


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["train", "--steps", "three"],
        ["train", "--no-such-flag"],
        ["evaluate"],
        ["frobnicate"],
    ],
)
def test_argparse_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "field"), [("--steps", "0", "steps"), ("--lr", "-1", "lr"), ("--rank", "0", "rank")]
)
def test_invalid_values_exit_2_naming_the_field(model_dir, tmp_path, capsys, flag, value, field):
    argv = train_argv(model_dir, tmp_path / "run")
    argv += [flag, value]  # argparse keeps the last occurrence
    assert run(argv) == 2
    assert field in capsys.readouterr().err


def test_evaluate_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert run(["evaluate", str(tmp_path), "--quiet"]) == 2
    assert "config.json" in capsys.readouterr().err


# ---- --config and flags --------------------------------------------------------------------------
def test_config_file_with_flag_overrides(tmp_path):
    from scalabl.config import RunConfig

    base = RunConfig(task="arc_challenge", max_test=7, n_samples=(5,))
    base.train.steps = 11
    base.method.rank = 3
    path = tmp_path / "run.json"
    path.write_text(json.dumps(base.to_dict()))
    args = build_parser().parse_args(
        ["train", "--config", str(path), "--steps", "4", "--targets", "q_proj, k_proj", "--n-samples", "1,0"]
    )
    config = cli.run_config(args)
    assert config.task == "arc_challenge" and config.max_test == 7  # from the file
    assert config.method.rank == 3
    assert config.train.steps == 4  # the flag wins
    assert config.method.target_modules == ("q_proj", "k_proj")
    assert config.n_samples == (1, 0)


def test_bad_config_file(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    assert run(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--quiet"]) != 0
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"modle": "x"}))
    assert run(["train", "--config", str(unknown), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "modle" in capsys.readouterr().err


# ---- every method --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_and_evaluates_from_the_cli(method, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / method
    extra = {
        "ensemble_size": "2",
        "tfb_samples": "1",
        "tfb_search_steps": "1",
        "laplace_max_train": "4",
        "max_validation": "4",
        "steps": "2",
    }
    argv = train_argv(model_dir, out, method)
    argv = [a for a in argv if a not in ("--steps", "3")] + [
        x for k, v in extra.items() for x in (f"--{k.replace('_', '-')}", v)
    ]
    assert run(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    from scalabl.methods import MethodConfig, get_method

    counts = get_method(MethodConfig(method=method, ensemble_size=2)).sample_counts((2, 0))
    assert set(m["eval"]) == {f"S={s}" for s in counts}
    assert m["method"] == method and m["train_steps"] == 2
    assert run(["evaluate", str(out), "--n-samples", "1", "--quiet"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["fitted"] == m["fitted"]  # post-hoc results are kept with the adapter


def test_methods_lists_every_method_one_line_each(capsys):
    assert run(["methods"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(METHODS)


def test_post_hoc_methods_start_from_an_mle_run(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = tmp_path / "mle"
    assert run(train_argv(model_dir, base, "mle")) == 0
    for method in ("tfb", "temperature"):
        out = tmp_path / method
        argv = train_argv(
            model_dir, out, method, from_run=str(base), max_validation="4", tfb_search_steps="1"
        )
        assert run(argv) == 0
        m = json.loads((out / "metrics.json").read_text())
        assert m["train_steps"] == 0 and m["from_run"] == str(base)
        assert not (out / "history.jsonl").exists()  # no training happened
        assert "No training in this run" in (out / "report.md").read_text()
        ours = load_file(str(out / "predictions.safetensors"))["log_probs_S0"]
        mle = load_file(str(base / "predictions.safetensors"))["log_probs_S0"]
        if method == "tfb":  # posterior mean = the MLE adapter (the SVD rotation keeps B A)
            assert torch.allclose(ours, mle, rtol=1e-5, atol=1e-5)  # float32 rounding of the rotation
            assert "beta" in m["fitted"]
        else:
            assert m["fitted"]["temperature"] > 0
    # a Bayesian adapter, or a different rank, cannot seed a run
    scal = tmp_path / "scalabl"
    assert run(train_argv(model_dir, scal, "scalabl")) == 0
    capsys.readouterr()
    assert run(train_argv(model_dir, tmp_path / "x", "tfb", from_run=str(scal))) == 2
    assert "cannot seed" in capsys.readouterr().err
    argv = train_argv(model_dir, tmp_path / "y", "tfb", from_run=str(base))
    argv[argv.index("--rank") + 1] = "4"
    assert run(argv) == 2
    assert "rank" in capsys.readouterr().err


def test_evaluate_with_shifted_tasks(cli_run, capsys):
    if cli_run["method"] != "scalabl":
        pytest.skip("one method is enough")
    out = cli_run["out"]
    assert (
        run(
            [
                "evaluate",
                str(out),
                "--n-samples",
                "2",
                "--max-test",
                "5",
                "--ood",
                "arc_c,mmlu_chemistry",
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "Distribution shift" in printed and "AUROC (entropy)" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["ood"]) == {"arc_c", "mmlu_chemistry"}
    for task in m["ood"]:
        r = m["ood"][task]["S=2"]
        assert 0.0 <= r["auroc_max_prob"] <= 1.0 and 0.0 <= r["auroc_entropy"] <= 1.0
        assert {"acc", "ece", "nll", "aurc", "acc_cov80"} <= set(r)
    preds = load_file(str(out / "predictions.safetensors"))
    assert preds["ood.arc_c.log_probs_S2"].shape[0] == 5
    report = (out / "report.md").read_text()
    assert "Selective prediction" in report and "Distribution shift" in report
    assert (out / "selective.png").stat().st_size > 1000


def test_evaluate_sampling_only_the_last_layer(cli_run):
    if cli_run["method"] != "scalabl":
        pytest.skip("sampling a subset needs a Bayesian method")
    out = cli_run["out"]
    argv = ["evaluate", str(out), "--n-samples", "2", "--max-test", "4", "--quiet"]
    assert run([*argv, "--sample-modules", "last:1"]) == 0
    subset = json.loads((out / "metrics.json").read_text())["eval"]["S=2"]
    assert run(argv) == 0
    full = json.loads((out / "metrics.json").read_text())["eval"]["S=2"]
    assert 0.0 <= subset["acc"] <= 1.0 and subset["nll"] != full["nll"]  # fewer modules sampled
    assert run([*argv, "--sample-modules", "first:1"]) == 2


def test_train_with_the_memory_options(tmp_path):
    """--gradient-checkpointing, --device and --quant reach the run (and its config.json)."""
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "run"
    wide = save_tiny_model(tmp_path / "wide", hidden=QUANT_HIDDEN)
    argv = train_argv(wide, out, "scalabl", gradient_checkpointing="", device="cpu", quant="4bit")
    argv.remove("")  # a store_true flag takes no value
    assert run(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert (
        config["gradient_checkpointing"] is True and config["device"] == "cpu" and config["quant"] == "4bit"
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["processes"] == 1 and 0.0 <= m["eval"]["S=2"]["acc"] <= 1.0
    # a 4-bit base on the CPU gets no validation curve (an eval-mode pass would repack its weights)
    assert not any("val_nll" in json.loads(line) for line in (out / "history.jsonl").read_text().splitlines())
    assert run([*train_argv(model_dir, tmp_path / "bad", "mle"), "--device", "cuda:0"]) == (
        0 if __import__("torch").cuda.is_available() else 2
    )


# ---- write rules: a command never replaces what it did not write -----------------------------------
def test_train_refuses_a_folder_that_holds_a_run_and_overwrite_keeps_other_files(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(train_argv(model_dir, out, "scalabl")) == 0
    adapter = (out / "adapter.safetensors").read_bytes()
    assert run(train_argv(model_dir, out, "mle")) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err and "adapter.safetensors" in err
    assert (out / "adapter.safetensors").read_bytes() == adapter  # untouched
    assert json.loads((out / "config.json").read_text())["method"]["method"] == "scalabl"

    (out / "notes.txt").write_text("my notes")
    assert run([*train_argv(model_dir, out, "mle"), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "my notes"  # not the run's: kept
    assert json.loads((out / "metrics.json").read_text())["method"] == "mle"
    assert not (out / "posterior_modules.png").exists()  # the scalabl run's plot, stale for mle: gone
    assert set(RUN_FILES) <= {p.name for p in out.iterdir()}


def test_train_into_a_folder_with_a_stray_file_is_refused(model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("x")
    monkeypatch.setattr("scalabl.runs.load_model", lambda *a, **k: pytest.fail("loaded a model"))
    assert run(train_argv(model_dir, out)) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_resume_refuses_overwrite(model_dir, tmp_path, capsys):
    assert run(["train", "--resume", str(tmp_path), "--overwrite"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_export_refuses_a_used_folder_and_its_own_run(cli_run, tmp_path, capsys):
    run_dir = cli_run["out"]
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert run(["export", str(run_dir), str(run_dir)]) == 2
    assert "run folder itself" in capsys.readouterr().err
    other = tmp_path / "other-run"
    other.mkdir()
    (other / "adapter.safetensors").write_bytes(b"someone's adapter")
    assert run(["export", str(run_dir), str(other)]) == 2
    err = capsys.readouterr().err
    assert str(other) in err and "--overwrite" in err
    assert (other / "adapter.safetensors").read_bytes() == b"someone's adapter"
    assert run(["export", str(run_dir), str(other), "--overwrite"]) == 0
    assert (other / "adapter.safetensors").read_bytes() == b"someone's adapter"  # not an export file: kept
    assert (other / "adapter_model.safetensors").is_file() and (other / "adapter_config.json").is_file()
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_demo_refuses_a_used_folder_before_any_work(tmp_path, capsys, monkeypatch):
    (tmp_path / "report.md").write_text("an earlier demo")
    monkeypatch.setattr("scalabl.demo.train_run", lambda *a, **k: pytest.fail("trained"))
    assert run(["demo", "--quick", "--quiet", "--out", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "report.md").read_text() == "an earlier demo"


def test_bench_refuses_an_out_folder_holding_other_files(tmp_path, capsys):
    out = tmp_path / "bench-out"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    config = tmp_path / "bench.json"
    config.write_text(json.dumps({"tasks": ["arc_easy"], "methods": {"mle": {}}, "out": str(out)}))
    for extra in ([], ["--tables-only"]):
        assert run(["bench", str(config), "--quiet", *extra]) == 2
        assert "thesis.tex" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_the_optional_kernel_notices_are_filtered_without_quant():
    """bitsandbytes (at import) and kernels (offline) log a notice about an optional CPU kernel package
    that only a --quant run uses; other records of those loggers pass."""
    import argparse
    import logging

    from scalabl.cli import _no_kernels_notice, quiet_upstream_noise

    quiet_upstream_noise(argparse.Namespace(verbose=False))
    for name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
        logger = logging.getLogger(name)
        assert _no_kernels_notice in logger.filters
        notice = logger.makeRecord(
            name, logging.WARNING, "x", 1, "trust check for 'kernels-community/q'", (), None
        )
        other = logger.makeRecord(name, logging.WARNING, "x", 1, "something else", (), None)
        assert not logger.filter(notice) and logger.filter(other)
