"""The option enums: one list of allowed values, which the registries and configs follow."""

import json

import pytest

from scalabl.choices import Choice, DType, MethodName, NoiseMode
from scalabl.methods import METHODS


def test_method_names_match_the_registry():
    assert tuple(METHODS) == MethodName.values()


def test_a_member_is_its_string():
    assert NoiseMode.SHARED == "shared" and {"shared": 1}[NoiseMode.SHARED] == 1
    assert f"{NoiseMode.SHARED}" == "shared" and str(NoiseMode.SHARED) == "shared"
    assert json.dumps({"noise": NoiseMode.SHARED}) == '{"noise": "shared"}'


def test_parse_names_the_field_and_the_allowed_values():
    assert NoiseMode.parse("sequence", "noise") is NoiseMode.SEQUENCE
    with pytest.raises(ValueError, match=r"^noise: 'often' not in \('sequence', 'shared'\)$"):
        NoiseMode.parse("often", "noise")


def test_dtype_aliases():
    assert (
        DType("bf16") is DType.BFLOAT16 and DType("FP32") is DType.FLOAT32 and DType("fp16") is DType.FLOAT16
    )
    with pytest.raises(ValueError, match="dtype"):
        DType.parse("int8", "dtype")


def test_every_choice_enum_is_a_string_enum():
    for enum in Choice.__subclasses__():
        assert all(isinstance(m.value, str) for m in enum)
