"""Command-line flags made from config fields: name, type, allowed values, default and help are
the field's (:func:`scalabl.config.fields.option`), so a new option is written once.

A field ``n_samples`` becomes ``--n-samples`` (or the field's ``flag``); booleans get
``--x/--no-x``; tuples are comma-separated; fixed-value fields list their choices. Every flag
defaults to None on the parser, so :func:`given` tells what the user set, which then overrides a
``--config`` file or the dataclass defaults.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from dataclasses import MISSING, Field, fields, replace
from typing import Any

from scalabl.config.fields import choice_type, field_types, unwrap_optional


def int_list(text: str) -> tuple[int, ...]:
    """'10,0' -> (10, 0), for argparse."""
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def name_list(text: str) -> tuple[str, ...]:
    """'arc_c, arc_e' -> ('arc_c', 'arc_e'), for argparse."""
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated names")
    return names


def flag_name(f: Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def dest(cls: type, name: str) -> str:
    return f"{cls.__name__}.{name}"


def _shown(f: Field) -> str:
    """How ``--help`` states a field's default."""
    if f.metadata.get("shown"):
        return f.metadata["shown"]
    value = f.default if f.default is not MISSING else f.default_factory()
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value)


def options(cls: type, only: Iterable[str] | None = None) -> list[Field]:
    """The fields of ``cls`` that are command-line options (in ``only``, if given, and in its order)."""
    found = {f.name: f for f in fields(cls) if f.metadata.get("cli", False)}
    names = list(found) if only is None else list(only)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise AttributeError(f"{cls.__name__} has no command-line option {unknown[0]!r}")
    return [found[n] for n in names]


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    only: Iterable[str] | None = None,
    *,
    default: str | None = None,
) -> None:
    """Add one flag per option field of ``cls`` (see the module docstring); ``default`` states the
    defaults in ``--help`` where they are not the field's (``"the run's own"``)."""
    for f in options(cls, only):
        kind, _ = unwrap_optional(field_types(cls)[f.name])
        help_text = f"{f.metadata['help']} (default: {default or _shown(f)})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": dest(cls, f.name), "default": None, "help": help_text}
        enum = choice_type(cls, f.name)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif enum is not None:
            kwargs["choices"] = enum.values()
        elif kind == tuple[int, ...]:
            kwargs.update(type=int_list, metavar="N,N")
        elif kind == tuple[str, ...]:
            kwargs.update(type=name_list, metavar="A,B")
        elif kind in (int, float, str):
            kwargs.update(type=kind, metavar=f.name.upper())
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for {kind!r}")
        parser.add_argument(flag_name(f), **kwargs)


def given(args: argparse.Namespace, cls: type, only: Iterable[str] | None = None) -> dict[str, Any]:
    """The options of ``cls`` set on the command line, by field name."""
    out = {}
    for f in options(cls, only):
        value = getattr(args, dest(cls, f.name), None)
        if value is not None:
            out[f.name] = value
    return out


def given_flags(args: argparse.Namespace, *classes: type) -> list[str]:
    """The flags of ``classes`` set on the command line (for refusing them where they do not apply)."""
    return [
        flag_name(f)
        for cls in classes
        for f in options(cls)
        if getattr(args, dest(cls, f.name), None) is not None
    ]


def run_config(args: argparse.Namespace) -> Any:
    """The run's config: ``--config`` (or the defaults), with the flags given on top."""
    from scalabl.config import MethodConfig, RunConfig, TrainConfig
    from scalabl.config.generate import GenerateConfig

    base = RunConfig()
    if args.config is not None:
        try:
            base = RunConfig.from_dict(json.loads(args.config.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(f"error: --config {args.config}: {err}") from err
    method = replace(base.method, **given(args, MethodConfig))
    train = replace(base.train, **given(args, TrainConfig))
    generate = replace(base.generate, **given(args, GenerateConfig))
    return replace(base, **given(args, RunConfig), method=method, train=train, generate=generate)
