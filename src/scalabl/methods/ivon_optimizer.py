"""IVON (``ivon-opt``'s optimiser) with its step count in the state dict, so a checkpoint resumes it.

``ivon.IVON`` keeps its Hessian and momentum in the parameter groups (and so in ``state_dict()``)
but the step count behind its momentum debiasing in a plain attribute, which ``state_dict()``
leaves out: a resumed run would debias as if it started again. This subclass adds the count and
changes nothing else. Imported only when the ivon method builds its optimiser (an optional extra).
"""

from __future__ import annotations

from typing import Any

from ivon import IVON


class ResumableIVON(IVON):
    """:class:`ivon.IVON` whose ``state_dict`` holds ``current_step``."""

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "current_step": self.current_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.current_step = int(state_dict.pop("current_step", 0))
        super().load_state_dict(state_dict)
