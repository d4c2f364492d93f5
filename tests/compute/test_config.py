"""Shared configuration checks (reference_impl/config.py) against independent sources."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from blueprint_format import models
from reference_impl.config import ConfigError, finite_float, normalised_weights, positive_int, spec_max_length

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "spec/v1/blueprint.schema.json").read_text())


@pytest.mark.parametrize(
    ("model", "field", "schema_def"),
    [(models.Domain, "description", "domain"), (models.Domain, "source", "domain"),
     (models.HeavyTail, "message", "heavy_tail"), (models.Method, "loss", "method")],
)
def test_spec_max_length_agrees_with_the_schema(model: type, field: str, schema_def: str) -> None:
    assert spec_max_length(model, field) == SCHEMA["$defs"][schema_def]["properties"][field]["maxLength"]


def test_spec_max_length_of_a_member_without_one() -> None:
    with pytest.raises(KeyError):
        spec_max_length(models.Domain, "weight")


@pytest.mark.parametrize("value", [float("inf"), float("nan"), "1", True, None])
def test_finite_float_refuses(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        finite_float("eta", value)
    assert info.value.field == "eta" and info.value.code == "usage-error"


@pytest.mark.parametrize("value", [0, -1, 1.0, True, "2"])
def test_positive_int_refuses(value: object) -> None:
    with pytest.raises(ConfigError):
        positive_int("batch_size", value)


def test_normalised_weights_survive_huge_values() -> None:
    w = normalised_weights("w", {"x": 1e308, "y": 1e308, "z": 0.0})
    assert w == {"x": 0.5, "y": 0.5, "z": 0.0}
    w = normalised_weights("w", {"a": 1e-320, "b": 3e-320})
    assert math.isclose(w["a"], 0.25, rel_tol=1e-3) and math.isclose(sum(w.values()), 1.0)
    with pytest.raises(ConfigError):
        normalised_weights("w", {"x": 0.0})
