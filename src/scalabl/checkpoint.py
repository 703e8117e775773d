"""Training checkpoints: one safetensors file, written atomically, that resumes a run bit for bit.

A checkpoint holds everything the training loop's future depends on:

* the trainable tensors of the adapter (LoRA and variational parameters) and its buffers,
* the optimisers' states (AdamW moments and step counts; BLoB's SGD; IVON's Hessian, momentum and
  step count) and the LR scheduler,
* the random state: the loop's ``torch.Generator`` (data order and noise) and torch's global RNG
  (peft's dropout), and the data position (the current epoch's permutation and the next index),
* the history logged so far and the partial averages since the last log.

Tensors go in the safetensors body; everything else is JSON in its header metadata. No pickle:
loading a checkpoint cannot run code. The file is written to a temporary name and renamed over the
previous checkpoint, so a kill at any moment leaves either the old or the new checkpoint, whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from scalabl.io import atomic_path

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = 1


def _adapter_keys(model: nn.Module) -> list[str]:
    """State keys of what training changes: every tensor of the adapter modules (``lora_`` in the name)."""
    return [k for k in model.state_dict() if "lora_" in k]


def _pack(key: str, value: Any, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A tensor into the body (named ``key``), anything else as a JSON value."""
    if torch.is_tensor(value):
        tensors[key] = value.detach().contiguous().cpu()
        return {"tensor": key}
    return {"value": value}


def _unpack(packed: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    return tensors[packed["tensor"]] if "tensor" in packed else packed["value"]


def _flatten_optimizer(
    prefix: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
) -> dict:
    """An optimiser's state dict as JSON with its tensors moved into ``tensors``: the per-parameter
    state (AdamW's moments), tensors held in a parameter group (IVON's Hessian and momentum),
    state under names rather than parameters (IVON's running averages) and extra top-level entries."""
    state = optimizer.state_dict()
    layout: dict[str, Any] = {"param_groups": [], "state": {}, "named_state": {}, "extra": {}}
    for g, group in enumerate(state["param_groups"]):
        layout["param_groups"].append(
            {
                name: {"tensor_in_group": _pack(f"{prefix}.group{g}.{name}", v, tensors)["tensor"]}
                if torch.is_tensor(v)
                else v
                for name, v in group.items()
            }
        )
    for idx, entry in state["state"].items():
        if not isinstance(idx, int):
            layout["named_state"][idx] = _pack(f"{prefix}.named.{idx}", entry, tensors)
            continue
        layout["state"][str(idx)] = {
            name: _pack(f"{prefix}.{idx}.{name}", value, tensors) for name, value in entry.items()
        }
    for key, value in state.items():
        if key not in ("state", "param_groups"):
            layout["extra"][key] = _pack(f"{prefix}.extra.{key}", value, tensors)
    return layout


def _unflatten_optimizer(layout: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state: dict[Any, Any] = {
        int(idx): {name: _unpack(v, tensors) for name, v in entry.items()}
        for idx, entry in layout["state"].items()
    }
    state.update({name: _unpack(v, tensors) for name, v in layout.get("named_state", {}).items()})
    groups = [
        {
            name: tensors[v["tensor_in_group"]] if isinstance(v, dict) and "tensor_in_group" in v else v
            for name, v in group.items()
        }
        for group in layout["param_groups"]
    ]
    extra = {key: _unpack(v, tensors) for key, v in layout.get("extra", {}).items()}
    return {"state": state, "param_groups": groups, **extra}


def save_checkpoint(
    folder: str | Path,
    *,
    model: nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    scheduler: Any,
    generator: torch.Generator,
    loop_state: dict[str, Any],
) -> Path:
    """Write ``folder/checkpoint.safetensors`` atomically; ``loop_state`` must be JSON-serialisable."""
    path = Path(folder) / CHECKPOINT_FILE
    full = model.state_dict()
    tensors = {f"model.{k}": full[k].detach().contiguous().cpu() for k in _adapter_keys(model)}
    layouts = {
        name: _flatten_optimizer(f"optimizer.{name}", opt, tensors) for name, opt in optimizers.items()
    }
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "format": FORMAT,
        "optimizers": layouts,
        "scheduler": scheduler.state_dict(),
        "loop": loop_state,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"scalabl_checkpoint": json.dumps(meta)})
    return path


def read_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The checkpoint's tensors and metadata, or None if the folder has none."""
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("scalabl_checkpoint")
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable checkpoint ({err})") from err
    if raw is None:
        raise ValueError(f"{path}: not a scalabl checkpoint (no 'scalabl_checkpoint' metadata)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {meta.get('format')!r}, this scalabl reads {FORMAT}")
    return tensors, meta


def restore_checkpoint(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    *,
    model: nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    scheduler: Any,
    generator: torch.Generator,
    source: str,
) -> dict[str, Any]:
    """Load a checkpoint into the live training objects; returns its loop state."""
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = set(_adapter_keys(model))
    if set(model_state) != expected:
        missing = sorted(expected - set(model_state))[:1] or sorted(set(model_state) - expected)[:1]
        raise ValueError(f"{source}: the checkpoint's adapter does not match this model (e.g. {missing[0]})")
    live = model.state_dict()
    with torch.no_grad():
        for k, v in model_state.items():
            live[k].copy_(v)
    if set(meta["optimizers"]) != set(optimizers):
        raise ValueError(
            f"{source}: checkpoint optimisers {sorted(meta['optimizers'])} != {sorted(optimizers)}"
        )
    for name, opt in optimizers.items():
        opt.load_state_dict(_unflatten_optimizer(meta["optimizers"][name], tensors))
    scheduler.load_state_dict(meta["scheduler"])
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    return meta["loop"]
