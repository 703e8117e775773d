"""Methods behind one interface (see :class:`scalabl.methods.base.Method`)."""

from __future__ import annotations

from scalabl.methods.base import Method, MethodConfig
from scalabl.methods.mle import MLE
from scalabl.methods.scalabl import ScalaBL

METHODS: dict[str, type[Method]] = {m.name: m for m in (MLE, ScalaBL)}


def get_method(config: MethodConfig) -> Method:
    """The method object named by ``config.method``."""
    try:
        cls = METHODS[config.method]
    except KeyError:
        raise ValueError(f"method: unknown method {config.method!r}; allowed: {', '.join(METHODS)}") from None
    return cls(config)


__all__ = ["METHODS", "Method", "MethodConfig", "get_method"]
