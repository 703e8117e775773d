"""The hash a bench cell's folder is named by (:func:`cell_digest`), kept stable as options are added.

A finished cell is found again by this hash of its run config, in ``out`` or in the archive kept
with the repository: a change that alters the hashed dict orphans the archived cells, so the fields
added since cells were first run are left out at their defaults, and tests pin known hashes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from scalabl.choices import LengthNorm
from scalabl.config import RunConfig
from scalabl.config.generate import GenerateConfig
from scalabl.methods import METHODS
from scalabl.plan import default_targets_for

# Run-config fields added after cells were first run ("train.adam_eps": a field of a section): left
# out of a cell's hash while at their default, so that adding an option does not orphan the cells
# already computed.
HASH_OMIT_AT_DEFAULT: dict[str, Any] = {
    "quant": None,
    "device": "auto",
    "gradient_checkpointing": False,
    "sample_modules": "all",
    "fsdp": False,
    "max_length": None,
    "eval_split": "test",
    "train.adam_eps": 1e-8,
    "train.val_size": 32,
    "train.val_every": 0,
    "method.noise_sharing": "module",
    "method.covariance": "diagonal",
    "method.prior_fit": "fixed",
    "method.ivon_lr": 0.03,
    "method.ivon_ess": 1e7,
    "method.ivon_hess_init": 3e-4,
    "method.ivon_beta2": 0.99999,
    "method.ivon_clip_radius": 1e-3,
    "method.ivon_train_samples": 1,
    "method.xs_posterior": "swag",
    "method.swag_rank": 10,
    "method.swag_start": 0.5,
    "method.swag_every": 1,
    "generate": GenerateConfig().to_dict(),
}


def cell_digest(run: RunConfig) -> str:
    """The hash a cell's folder is named by: of the run's config dict, with the fields added since
    cells were first archived left out at their defaults (:data:`HASH_OMIT_AT_DEFAULT`)."""
    config = run.to_dict()
    for path, default in HASH_OMIT_AT_DEFAULT.items():
        *sections, key = path.split(".")
        part = config
        for section in sections:
            part = part[section]
        if part.get(key) == default:
            del part[key]
    # Settings that became method-dependent defaults (None) are hashed by the value the method
    # uses: a cell keeps its folder while that value is what it ran with, and moves when a
    # method's default changes.
    method = METHODS[run.method.method](run.method)
    config["method"]["sigma_init"] = method.sigma_init
    config["train"]["variational_lr"] = method.train_config(run.train).variational_lr
    # length_norm was a boolean when most cells were run: none and tokens hash as False and True
    legacy = {LengthNorm.NONE: False, LengthNorm.TOKENS: True}
    config["length_norm"] = legacy.get(run.length_norm, config["length_norm"])
    if run.method.target_modules is None:  # the architecture's defaults, as the run resolves them
        config["method"]["target_modules"] = list(default_targets_for(run.model))
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
