"""The light list of allowed values must match the real registries."""

from scalabl.choices import METHOD_NAMES
from scalabl.methods import METHODS


def test_method_names_match_the_registry():
    assert tuple(METHODS) == METHOD_NAMES
