"""Command-line flags come from the config fields: one definition per option, its help and default shown."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import pytest

from scalabl.choices import NoiseMode
from scalabl.config import MethodConfig, PredictConfig, RunConfig, TrainConfig
from scalabl.config.fields import coerce_choices, option, plain, same_as
from scalabl.config.flags import add_options, flag_name, given, given_flags, options
from scalabl.plan import PlanConfig

CONFIGS = (RunConfig, MethodConfig, TrainConfig)


@dataclass
class Toy:
    count: int = option(3, "how many")
    ratio: float | None = option(None, "a ratio", shown="the method's own")
    noise: NoiseMode = option(NoiseMode.SEQUENCE, "noise draws")
    loud: bool = option(False, "shout")
    names: tuple[str, ...] = option(("a", "b"), "some names", flag="--labels")
    counts: tuple[int, ...] = option((10, 0), "some counts")
    hidden: int = option(1, "internal", cli=False)
    plain_field: int = 0

    def __post_init__(self) -> None:
        coerce_choices(self)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_options(parser, Toy)
    return parser.parse_args(argv)


def test_each_field_type_gets_its_flag():
    args = parse(
        [
            "--count",
            "5",
            "--ratio",
            "0.5",
            "--noise",
            "shared",
            "--loud",
            "--labels",
            "x, y",
            "--counts",
            "4,0",
        ]
    )
    assert given(args, Toy) == {
        "count": 5,
        "ratio": 0.5,
        "noise": "shared",
        "loud": True,
        "names": ("x", "y"),
        "counts": (4, 0),
    }
    assert Toy(**given(args, Toy)).noise is NoiseMode.SHARED
    assert given(parse(["--no-loud"]), Toy) == {"loud": False}
    assert given(parse([]), Toy) == {}  # nothing given: the config's own values stand
    assert given_flags(parse(["--count", "1"]), Toy) == ["--count"]


def test_only_option_fields_are_flags():
    assert [f.name for f in options(Toy)] == ["count", "ratio", "noise", "loud", "names", "counts"]
    with pytest.raises(AttributeError, match="hidden"):
        options(Toy, ["hidden"])


@pytest.mark.parametrize("argv", [["--noise", "often"], ["--count", "x"], ["--counts", "1,a"]])
def test_bad_values_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert "error" in capsys.readouterr().err


def test_help_states_each_default():
    parser = argparse.ArgumentParser()
    add_options(parser, Toy)
    text = " ".join(parser.format_help().split())
    for part in (
        "how many (default: 3)",
        "a ratio (default: the method's own)",
        "{sequence,shared}",
        "noise draws (default: sequence)",
        "shout (default: off)",
        "--labels A,B",
        "some names (default: a,b)",
        "some counts (default: 10,0)",
    ):
        assert part in text, part


def test_every_option_is_defined_once_across_the_train_command():
    flags = [flag_name(f) for cls in CONFIGS for f in options(cls)]
    assert len(flags) == len(set(flags))
    assert all(
        f.metadata["help"] for cls in (*CONFIGS, PredictConfig) for f in fields(cls) if f.metadata.get("cli")
    )


def test_a_shared_option_is_written_once():
    """eval_batch_size is PredictConfig.batch_size, plan's options are the run's: same help, same default."""
    run, predict = {f.name: f for f in fields(RunConfig)}, {f.name: f for f in fields(PredictConfig)}
    assert run["eval_batch_size"].metadata["help"] == predict["batch_size"].metadata["help"]
    plan, method = {f.name: f for f in fields(PlanConfig)}, {f.name: f for f in fields(MethodConfig)}
    assert plan["targets"].metadata == method["target_modules"].metadata
    assert plan["rank"].default == method["rank"].default
    assert plan["dtype"].default == "bfloat16" != run["dtype"].default  # a changed default, same help
    assert plan["dtype"].metadata["help"] == run["dtype"].metadata["help"]


def test_same_as_copies_a_field():
    @dataclass
    class Other:
        count: int = same_as(Toy, "count", default=7)
        names: tuple[str, ...] = same_as(Toy, "names")

    assert Other().count == 7 and Other().names == ("a", "b")
    assert flag_name(next(f for f in fields(Other) if f.name == "names")) == "--labels"


def test_plain_values_for_json():
    assert plain({"a": (NoiseMode.SHARED, 1), "b": [NoiseMode.SEQUENCE]}) == {
        "a": ["shared", 1],
        "b": ["sequence"],
    }
    assert type(plain(NoiseMode.SHARED)) is str
