"""Helpers shared by the config dataclasses (MethodConfig, TrainConfig, RunConfig)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any


def check_fields(cls: type, d: dict[str, Any], what: str) -> None:
    """Raise a ValueError naming unknown keys of ``d`` and the allowed ones (a typo in a JSON config)."""
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {sorted(unknown)}; allowed: {sorted(known)}")
