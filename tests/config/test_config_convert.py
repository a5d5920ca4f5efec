"""Building dataclasses from plain data: typed conversion, errors that name the dotted key,
validate() after building, and the way back (to_dict)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from lm_flipout.config import from_dict, to_dict
from lm_flipout.errors import ConfigError


# Toy schema for the generic machinery, independent of the real recipe sections.
@dataclass
class Inner:
    rate: float = 0.1
    kind: Literal["alpha", "beta"] = "alpha"

    def validate(self) -> None:
        if not 0 <= self.rate < 1:
            raise ValueError(f"rate={self.rate} must lie in [0, 1)")


@dataclass
class Outer:
    count: int = 1
    flag: bool = False
    label: Optional[str] = None
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    table: dict[str, float] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)


@dataclass
class NeedsKey:
    required: int



def test_from_dict_builds_nested_values_and_keeps_defaults() -> None:
    built = from_dict(
        Outer,
        {"count": 3, "label": "x", "sizes": [4], "table": {"a": 2}, "inner": {"rate": 0}},
        "toy.yaml",
    )
    assert built == Outer(count=3, label="x", sizes=[4], table={"a": 2.0}, inner=Inner(rate=0.0))
    assert isinstance(built.inner.rate, float) and isinstance(built.table["a"], float)
    assert from_dict(Outer, {}, "toy.yaml") == Outer()
    assert from_dict(Outer, {"inner": None}, "toy.yaml").inner == Inner()  # empty YAML section


def test_float_fields_accept_exponent_strings_that_pyyaml_leaves_as_text() -> None:
    assert from_dict(Inner, {"rate": "1e-3"}, "toy.yaml").rate == 0.001


@pytest.mark.parametrize(
    "data, key, expected, shown",
    [
        ({"count": True}, "'count'", "an integer", "True (bool)"),
        ({"count": 1.5}, "'count'", "an integer", "1.5 (float)"),
        ({"flag": 1}, "'flag'", "true or false", "1 (int)"),
        ({"flag": "yes"}, "'flag'", "true or false", "'yes' (str)"),
        ({"label": 5}, "'label'", "a string or null", "5 (int)"),
        ({"sizes": [1, "two"]}, "'sizes[1]'", "an integer", "'two' (str)"),
        ({"sizes": 3}, "'sizes'", "a list of integers", "3 (int)"),
        ({"table": {"a": "x"}}, "'table.a'", "a number", "'x' (str)"),
        ({"inner": {"rate": "fast"}}, "'inner.rate'", "a number", "'fast' (str)"),
        ({"inner": 3}, "section 'inner'", "a mapping", "3 (int)"),
    ],
)
def test_wrong_types_name_the_dotted_key_the_expected_type_and_the_value(
    data: dict, key: str, expected: str, shown: str
) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, data, "toy.yaml")
    message = str(info.value)
    assert message.startswith("toy.yaml:")
    assert key in message and expected in message and shown in message


def test_unknown_key_names_dotted_key_file_allowed_keys_and_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, {"inner": {"rte": 0.5}}, "toy.yaml")
    message = str(info.value)
    assert "toy.yaml" in message and "'inner.rte'" in message
    assert "Did you mean 'inner.rate'?" in message
    assert "rate, kind" in message


def test_literal_lists_choices_and_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"'inner.kind' must be one of 'alpha', 'beta'.*'alpah'.*"
                       r"Did you mean 'alpha'\?"):
        from_dict(Outer, {"inner": {"kind": "alpah"}}, "toy.yaml")


def test_validate_runs_after_building_and_names_file_and_section() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, {"inner": {"rate": 1.5}}, "toy.yaml")
    assert "toy.yaml" in str(info.value) and "'inner'" in str(info.value)
    assert "rate=1.5 must lie in [0, 1)" in str(info.value)


def test_missing_required_key_is_reported() -> None:
    with pytest.raises(ConfigError, match="required key 'required' is missing"):
        from_dict(NeedsKey, {}, "toy.yaml")


def test_to_dict_round_trips_through_from_dict() -> None:
    original = Outer(count=2, flag=True, sizes=[3], table={"k": 0.5}, inner=Inner(0.2, "beta"))
    plain = to_dict(original)
    assert plain["inner"] == {"rate": 0.2, "kind": "beta"}
    assert from_dict(Outer, plain, "toy.yaml") == original
