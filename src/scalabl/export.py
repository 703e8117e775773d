"""Export a trained adapter as a standard peft LoRA adapter that stock ``PeftModel.from_pretrained`` reads.

Every method's ``A`` module exposes the posterior mean as ``weight`` (ScalaBL: ``diag(mu) P``; BLoB,
TFB: the mean of the Gaussian; Laplace: the MAP), so the export is the posterior-mean adapter: the
``n_samples = 0`` predictions of scalabl, reproduced by any peft user without scalabl installed.
What a plain LoRA cannot hold is left out and reported: the posterior's spread, a temperature, the
other members of an ensemble (pick one with ``member``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from peft import LoraConfig
from safetensors.torch import save_file

from scalabl.api import BayesianLoRA
from scalabl.architectures import tied_head
from scalabl.bayesian import base_model as base_of
from scalabl.bayesian import lora_layers
from scalabl.hub import CARD, POSTERIOR, write_posterior
from scalabl.io import atomic_path, output_folder, write_json

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
NOTES = "scalabl_export.json"


def export_peft(
    blora: BayesianLoRA,
    out: str | Path,
    *,
    base_model: str,
    member: int | None = None,
    overwrite: bool = False,
    posterior_from: str | Path | None = None,
) -> list[str]:
    """Write ``out/adapter_model.safetensors`` + ``out/adapter_config.json`` (peft's format), each file
    atomically. ``out`` must be new or empty; ``overwrite=True`` replaces an earlier export's files
    there and keeps everything else (see :func:`scalabl.io.output_folder`). ``posterior_from`` (the
    run folder of ``blora``) adds the whole posterior and a model card (:mod:`scalabl.hub`).

    Returns notes on what the export leaves out (empty when nothing is lost but the spread).
    """
    out = Path(out)
    names = getattr(blora.method, "members", None)
    if names is not None:
        if member is None or not 0 <= member < len(names):
            raise ValueError(
                f"member: an ensemble exports one member; choose --member in 0..{len(names) - 1}"
            )
        adapter = names[member]
    elif member is not None:
        raise ValueError(f"member: only an ensemble has members, this is {blora.config.method!r}")
    else:
        adapter = "default"

    state = {}
    for name, layer in lora_layers(blora.model):
        if adapter not in layer.lora_A:
            continue
        state[f"{name}.lora_A.weight"] = layer.lora_A[adapter].weight.detach().contiguous().cpu().clone()
        state[f"{name}.lora_B.weight"] = layer.lora_B[adapter].weight.detach().contiguous().cpu().clone()
    config: LoraConfig = blora.method.lora_config()
    config.base_model_name_or_path = base_model
    notes = []
    if blora.method.bayesian:
        notes.append(
            f"{blora.config.method}: the posterior mean only (n_samples = 0); its spread is not exported"
        )
    if blora.temperature is not None:
        notes.append(
            f"temperature T = {blora.temperature:.4g} is not part of a peft adapter: divide log-probs by it"
        )
    if names is not None:
        notes.append(f"ensemble: member {member} of {len(names)} only")
    if tied_head(base_of(blora.model)) and any(n.endswith("lm_head") for n, _ in lora_layers(blora.model)):
        notes.append(
            "lm_head shares its weight with the input embeddings: its adapter changes the output head only; "
            "do not merge it (merging would change the input embeddings too)"
        )
    own = (PEFT_WEIGHTS, PEFT_CONFIG, NOTES) + ((POSTERIOR, CARD) if posterior_from is not None else ())
    with output_folder(out, own, overwrite=overwrite, command="scalabl export"):
        with atomic_path(out / PEFT_WEIGHTS) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        # peft writes its own config (kept as it is): into a scratch folder, then moved into place
        with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as scratch:
            config.save_pretrained(scratch)
            os.replace(Path(scratch) / PEFT_CONFIG, out / PEFT_CONFIG)
        write_json(out / NOTES, {"method": blora.config.to_dict(), "notes": notes})  # the provenance
        if posterior_from is not None:
            write_posterior(posterior_from, out, base_model=base_model, notes=notes)
    return notes
