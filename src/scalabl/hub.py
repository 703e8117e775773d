"""A Bayesian adapter as a folder a user can push to the Hugging Face hub, and back.

``scalabl export RUN OUT --with-posterior`` writes, beside the stock peft adapter of the posterior
mean (``adapter_model.safetensors``, ``adapter_config.json``: ``PeftModel.from_pretrained`` reads
them without scalabl installed)::

    OUT/posterior/config.json            the run's config (base model, method, scoring)
    OUT/posterior/adapter.safetensors    the whole posterior (scalabl's adapter: variational parameters,
    OUT/posterior/adapter_config.json    every ensemble member, Laplace's fit, a temperature)
    OUT/posterior/metrics.json           the run's test metrics
    OUT/README.md                        a model card: the method, its metrics, how to load it

:func:`from_pretrained` rebuilds the full posterior from such a folder, or from a hub repository
holding one (downloaded with ``huggingface_hub.snapshot_download``; offline, it must be cached).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from scalabl.api import ADAPTER_CONFIG_FILE, ADAPTER_FILE, BayesianLoRA
from scalabl.io import atomic_path, write_text
from scalabl.run_folder import CONFIG_FILE, METRICS_FILE, RunFolder
from scalabl.runs import load_base
from scalabl.tables import run_table

POSTERIOR = "posterior"
CARD = "README.md"
POSTERIOR_FILES = (CONFIG_FILE, ADAPTER_FILE, ADAPTER_CONFIG_FILE, METRICS_FILE)


def write_posterior(run_dir: str | Path, out: str | Path, *, base_model: str, notes: list[str]) -> None:
    """Copy a run's posterior (config, adapter, metrics) into ``out/posterior`` and write the model
    card ``out/README.md``; every file atomically."""
    run, target = Path(run_dir), Path(out) / POSTERIOR
    for name in POSTERIOR_FILES:
        if (run / name).is_file():
            with atomic_path(target / name) as tmp:
                shutil.copyfile(run / name, tmp)
    folder = RunFolder(run)
    metrics = folder.read_metrics() if (run / METRICS_FILE).is_file() else None
    write_text(Path(out) / CARD, model_card(folder.read_config().to_dict(), metrics, base_model, notes))


def model_card(
    config: dict[str, Any], metrics: dict[str, Any] | None, base_model: str, notes: list[str]
) -> str:
    """The hub's README.md: metadata, the run's metrics and how to load either form."""
    method = config["method"]["method"]
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {base_model}",
        "tags: [scalabl, bayesian-lora, lora, uncertainty, calibration]",
        "---",
        "",
        f"# {method} adapter for {base_model}",
        "",
        f"A Bayesian LoRA adapter trained with scalabl (method "
        f"`{method}`, rank {config['method'].get('rank')}, task `{config['task']}`).",
        "",
        "## Load it",
        "",
        "The posterior mean, with stock peft (no scalabl needed):",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base_model}"), "THIS_REPO")',
        "```",
        "",
        "The whole posterior (samples, model averages), with scalabl:",
        "",
        "```python",
        "import scalabl",
        'blora = scalabl.from_pretrained("THIS_REPO")',
        "```",
        "",
    ]
    if metrics is not None:
        lines += ["## Test metrics", "", run_table(method, metrics), ""]
    if notes:
        lines += ["## What the peft adapter leaves out", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def from_pretrained(
    path_or_id: str | Path, *, base_model: str | None = None, revision: str | None = None
) -> BayesianLoRA:
    """The full posterior of a ``scalabl export --with-posterior`` folder, or of a hub repository
    holding one, on its base model (``base_model`` replaces the one recorded, e.g. a local copy)."""
    folder = Path(path_or_id)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(repo_id=str(path_or_id), revision=revision))
        except (OSError, ValueError) as err:
            raise FileNotFoundError(
                f"{path_or_id}: not a local folder, and the hub did not give it ({type(err).__name__}: {err})"
            ) from err
    posterior = folder / POSTERIOR
    if not (posterior / ADAPTER_FILE).is_file() or not (posterior / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{folder}: no scalabl posterior ({POSTERIOR}/{ADAPTER_FILE} and {POSTERIOR}/{CONFIG_FILE}); "
            "write one with 'scalabl export RUN OUT --with-posterior', or load the posterior mean with "
            "peft's PeftModel.from_pretrained"
        )
    config = RunFolder(posterior).read_config()
    if base_model is not None:
        config = replace(config, model=base_model)
    model, tokenizer = load_base(config)
    return BayesianLoRA.load(posterior, model, tokenizer)
