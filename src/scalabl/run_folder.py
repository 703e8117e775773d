"""A run folder: the names of its files, how each is read and written, and the rule that a new run
never replaces what it did not write.

Layout::

    config.json            the RunConfig (everything needed to repeat the run)
    adapter.safetensors    the trained adapter (+ adapter_config.json)
    checkpoint/            the training checkpoint (resume); see scalabl.checkpoint
    history.jsonl          one line per training log (loss, NLL, KL, sigma, mu, ...)
    metrics.json           ACC / ECE / NLL / Brier per number of posterior samples, timings, sizes
    predictions.safetensors  predictive log-probs per S and the labels (for later analysis)
    decisions.json         conformal sets and the selective rule, fitted by `scalabl calibrate-decisions`
    report.md              the tables, with the plots below
    reliability.png        reliability diagram(s)
    selective.png          risk-coverage curves
    training.png           training curves
    posterior_modules.png  per-module sigma/mu during training (variational methods)

Every file is written atomically (:mod:`scalabl.io`); the names of metrics.json's entries and of
the prediction tensors come from :mod:`scalabl.results`.
"""

from __future__ import annotations

import json
import shutil
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from scalabl import __version__
from scalabl.api import ADAPTER_CONFIG_FILE, ADAPTER_FILE
from scalabl.config import RunConfig
from scalabl.io import atomic_path, output_folder, write_json, write_text
from scalabl.results import labels_key, predictions_key

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.jsonl"
PREDICTIONS_FILE = "predictions.safetensors"
REPORT_FILE = "report.md"
DECISIONS_FILE = "decisions.json"
CHECKPOINT_DIR = "checkpoint"
GENERATIONS_FILE = "generations.jsonl"  # an open QA run's answers, one line per test question
REJECTION_PLOT = "rejection.png"  # an open QA run's accuracy-rejection curves
RUN_FILES = (
    CONFIG_FILE,
    ADAPTER_FILE,
    ADAPTER_CONFIG_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    REPORT_FILE,
    "reliability.png",
    "selective.png",
    "training.png",
)  # what a finished multiple-choice run holds (an open QA run: generations and rejection curves instead
# of predictions, reliability and selective plots)
# all a run may write (decisions.json: fitted later on the run's adapter, dropped when it is retrained)
OWN = (
    *RUN_FILES,
    GENERATIONS_FILE,
    REJECTION_PLOT,
    "posterior_modules.png",
    DECISIONS_FILE,
    CHECKPOINT_DIR,
    ".write-test",
)


class RunFolder:
    """The files of one run (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    # ---- the write rule ---------------------------------------------------------------------------
    def new_run(self, *, overwrite: bool = False) -> AbstractContextManager[Path]:
        """Guard a new run's writes: a folder holding anything is refused unless ``overwrite``, which
        replaces only a run's own files (see :func:`scalabl.io.output_folder`)."""
        return output_folder(self.path, OWN, overwrite=overwrite, command="scalabl train")

    def check_writable(self) -> None:
        """Fail before training, not after: the folder must be creatable and writable."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path / ".write-test") as tmp:
                tmp.write_text("ok")
            (self.path / ".write-test").unlink()
        except OSError as err:
            raise OSError(f"output folder {self.path} is not writable: {err}") from err

    def check_free_space(self, adapter_parameters: int) -> None:
        """Refuse to start when the disk cannot hold the adapter, its checkpoint and the predictions."""
        # adapter + checkpoint (weights and two AdamW moments) + predictions and reports, with margin
        needed = 5 * 4 * adapter_parameters + 50 * 2**20
        free = shutil.disk_usage(self.path).free
        if free < needed:
            raise OSError(
                f"output folder {self.path}: {free / 2**20:.0f} MB free on its disk, the run needs about "
                f"{needed / 2**20:.0f} MB (adapter, checkpoint, predictions); free space or choose another --out"
            )

    # ---- config -----------------------------------------------------------------------------------
    def write_config(self, config: RunConfig) -> None:
        write_json(self.path / CONFIG_FILE, {"scalabl_version": __version__, **config.to_dict()})

    def read_config(self) -> RunConfig:
        path = self.path / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{self.path}: not a run folder (no {CONFIG_FILE})")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from err
        raw.pop("scalabl_version", None)
        return RunConfig.from_dict(raw)

    # ---- metrics ----------------------------------------------------------------------------------
    def read_metrics(self) -> dict[str, Any]:
        path = self.path / METRICS_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.path / METRICS_FILE, metrics)

    # ---- decisions --------------------------------------------------------------------------------
    def read_decisions(self) -> dict[str, Any] | None:
        """decisions.json (see :mod:`scalabl.decisions`), or None when none were fitted."""
        path = self.path / DECISIONS_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def write_decisions(self, decisions: dict[str, Any]) -> None:
        write_json(self.path / DECISIONS_FILE, decisions)

    def clear_decisions(self) -> None:
        (self.path / DECISIONS_FILE).unlink(missing_ok=True)

    # ---- history ----------------------------------------------------------------------------------
    def history(self) -> list[dict[str, Any]]:
        path = self.path / HISTORY_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def append_history(self, record: dict[str, Any]) -> None:
        with (self.path / HISTORY_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def write_history(self, records: list[dict[str, Any]]) -> None:
        write_text(self.path / HISTORY_FILE, "".join(json.dumps(r) + "\n" for r in records))

    def clear_history(self) -> None:
        (self.path / HISTORY_FILE).unlink(missing_ok=True)

    # ---- predictions ------------------------------------------------------------------------------
    def write_predictions(self, tensors: dict[str, torch.Tensor]) -> None:
        with atomic_path(self.path / PREDICTIONS_FILE) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))

    def predictions(self, n_samples: int, task: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities [N, C], labels [N]) of the evaluation with ``n_samples`` samples."""
        t = load_file(str(self.path / PREDICTIONS_FILE))
        return t[predictions_key(n_samples, task)].exp(), t[labels_key(task)]
