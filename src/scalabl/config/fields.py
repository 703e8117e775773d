"""How an option is written down once: a dataclass field with its help, from which validation of
fixed-value options, JSON round trips and the command line (:mod:`scalabl.config.flags`) follow."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import MISSING, Field, asdict, fields
from typing import Any, ClassVar, TypeVar

from scalabl.choices import Choice


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    default_factory: Any = MISSING,
    flag: str | None = None,
    shown: str | None = None,
    cli: bool = True,
) -> Any:
    """A config field that is an option: ``help`` is its one description (``--help``, docs).

    ``flag`` replaces the derived ``--field-name``; ``shown`` is how ``--help`` states the default
    (e.g. "the method's own" for a None default); ``cli=False`` keeps the field off the command line.
    """
    return dataclasses.field(
        default=default,
        default_factory=default_factory,
        metadata={"help": help, "flag": flag, "shown": shown, "cli": cli},
    )


def same_as(owner: type, name: str, **changes: Any) -> Any:
    """A field defined as ``owner.name`` is (its help, flag, default), with ``changes`` applied
    (``default=...``, ``help=...``): an option that appears in two configs is still written once."""
    f = field_of(owner, name)
    metadata = {**f.metadata, **{k: v for k, v in changes.items() if k != "default"}}
    if "default" in changes:
        return dataclasses.field(default=changes["default"], metadata=metadata)
    return dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=metadata)


def field_of(owner: type, name: str) -> Field:
    try:
        return next(f for f in fields(owner) if f.name == name)
    except StopIteration:
        raise AttributeError(f"{owner.__name__} has no field {name!r}") from None


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of each field (annotations are strings under ``from __future__``)."""
    return typing.get_type_hints(cls)


def unwrap_optional(kind: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; ``X`` -> ``(X, False)``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return kind, False


def choice_type(cls: type, name: str) -> type[Choice] | None:
    """The :class:`~scalabl.choices.Choice` enum of a fixed-value field, else None."""
    kind, _ = unwrap_optional(field_types(cls)[name])
    return kind if isinstance(kind, type) and issubclass(kind, Choice) else None


def coerce_choices(config: Any) -> None:
    """Turn the strings of fixed-value fields into their enum members, or raise a ValueError naming
    the field and its allowed values. Called first in each config's ``__post_init__``."""
    for f in fields(config):
        enum = choice_type(type(config), f.name)
        value = getattr(config, f.name)
        if enum is not None and value is not None:
            object.__setattr__(config, f.name, enum.parse(value, f.name))


def plain(value: Any) -> Any:
    """A config value as JSON writes it: enum members as their strings, tuples as lists."""
    if isinstance(value, Choice):
        return value.value
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass (nested ones included) as a JSON-ready dict."""
    return plain(asdict(config))


def check_fields(cls: type, d: dict[str, Any], what: str) -> None:
    """Raise a ValueError naming unknown keys of ``d`` and the allowed ones (a typo in a JSON config)."""
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {sorted(unknown)}; allowed: {sorted(known)}")


def positive_ints(config: Any, *names: str) -> None:
    """Each named field must be an integer >= 1."""
    for name in names:
        v = getattr(config, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: must be a positive integer, got {v!r}")


C = TypeVar("C", bound="JSONConfig")


class JSONConfig:
    """``to_dict`` / ``from_dict`` of a config dataclass: enums as strings, unknown keys named."""

    label: ClassVar[str] = "config"  # how an error names it ("method config: unknown field(s) ...")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        check_fields(cls, d, cls.label)
        return cls(**d)
