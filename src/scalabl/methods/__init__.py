"""Methods behind one interface (see :class:`scalabl.methods.base.Method`)."""

from __future__ import annotations

from scalabl.config import MethodConfig
from scalabl.methods.base import Method
from scalabl.methods.blob import BLoB
from scalabl.methods.blora_xs import BLoRAXS
from scalabl.methods.ensemble import Ensemble
from scalabl.methods.ivon import IVONLoRA
from scalabl.methods.laplace import LaplaceLoRA
from scalabl.methods.map import MAP
from scalabl.methods.mcdropout import MCDropout
from scalabl.methods.mle import MLE
from scalabl.methods.scalabl import ScalaBL
from scalabl.methods.temperature import Temperature
from scalabl.methods.tfb import TFB

# in the order of scalabl.choices.MethodName (a test holds the two together)
METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (MLE, ScalaBL, MAP, MCDropout, Ensemble, BLoB, TFB, LaplaceLoRA, Temperature, IVONLoRA, BLoRAXS)
}


def get_method(config: MethodConfig) -> Method:
    """The method object named by ``config.method``."""
    try:
        cls = METHODS[config.method]
    except KeyError:
        raise ValueError(f"method: unknown method {config.method!r}; allowed: {', '.join(METHODS)}") from None
    return cls(config)


__all__ = ["METHODS", "Method", "MethodConfig", "get_method"]
