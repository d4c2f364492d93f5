"""Checks shared by the reference implementation's configuration objects.

Each command's settings live in one frozen dataclass (for example `ComputeConfig`,
`FinetuneConfig`) that validates itself once, in `__post_init__`, with the checks below. The
Python API takes the object; the CLI builds it from flags. A bad setting raises `ConfigError`
(code `usage-error`, exit status 2) whose location is the field's name, so that the CLI can name
the flag and the Python caller the argument, before any model is loaded or any file is written.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from blueprint_format.errors import UsageError, make_error

T = TypeVar("T")


class ConfigError(UsageError):
    """A configuration value is out of range, of the wrong type, or conflicts with another."""

    @property
    def field(self) -> str:
        """The offending field's name (the issue's location)."""
        return self.issues[0].path


def config_error(field: str, message: str) -> ConfigError:
    """A `usage-error` located at `field`."""
    return ConfigError(make_error("usage-error", message, field))


def positive_int(field: str, value: Any, *, allow_none: bool = False, minimum: int = 1) -> int | None:
    """`value` as an int >= `minimum` (bools refused: True is not a batch size)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise config_error(field, f"{field} must be an integer, got {value!r}")
    if value < minimum:
        raise config_error(field, f"{field} must be at least {minimum}, got {value}")
    return value


def finite_float(
    field: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    allow_none: bool = False,
) -> float | None:
    """`value` as a finite float within [minimum, maximum] (or (minimum, ...] when exclusive)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise config_error(field, f"{field} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise config_error(field, f"{field} must be finite, got {value!r}")
    if minimum is not None and (x < minimum or (exclusive_minimum and x == minimum)):
        bound = f"> {minimum:g}" if exclusive_minimum else f">= {minimum:g}"
        raise config_error(field, f"{field} must be {bound}, got {x:g}")
    if maximum is not None and x > maximum:
        raise config_error(field, f"{field} must be <= {maximum:g}, got {x:g}")
    return x


def fraction(field: str, value: Any, *, allow_none: bool = False) -> float | None:
    """`value` as a fraction in (0, 1]."""
    return finite_float(field, value, minimum=0.0, maximum=1.0, exclusive_minimum=True, allow_none=allow_none)


def choice(field: str, value: T, choices: Collection[T]) -> T:
    """`value` if it is one of `choices`."""
    if value not in choices:
        listed = ", ".join(str(c) for c in choices)
        raise config_error(field, f"{field} must be one of {listed}; got {value!r}")
    return value


def normalised_weights(field: str, weights: Mapping[str, Any], names: Collection[str] | None = None) -> dict[str, float]:
    """Non-negative finite weights scaled to sum to 1 (computed so that huge values cannot
    overflow to inf and silently turn into 0 and 1). `names`: the allowed keys, when known."""
    if not weights:
        raise config_error(field, f"{field} is empty")
    values: dict[str, float] = {}
    for name, w in weights.items():
        if names is not None and name not in names:
            raise config_error(field, f"{field}: {name!r} is not one of {', '.join(sorted(names))}")
        x = finite_float(f"{field}[{name}]", w, minimum=0.0)
        assert x is not None
        values[name] = x
    top = max(values.values())
    if top <= 0.0:
        raise config_error(field, f"{field}: at least one weight must be positive")
    scaled = {k: v / top for k, v in values.items()}  # in [0, 1]: the sum below cannot overflow
    total = math.fsum(scaled.values())
    return {k: v / total for k, v in scaled.items()}


def spec_max_length(model: type[Any], field: str) -> int:
    """The maximum length the spec's model gives a string member, e.g.
    `spec_max_length(models.Domain, "description")` (blueprint_format.models is the one source
    of those limits: producers truncate or check with this, never with a restated number)."""

    def find(tp: Any) -> int | None:
        for meta in getattr(tp, "__metadata__", ()):
            for item in (meta, *getattr(meta, "metadata", ())):
                limit = getattr(item, "max_length", None)
                if isinstance(limit, int):
                    return limit
        for arg in typing.get_args(tp):
            limit = find(arg)
            if limit is not None:
                return limit
        return None

    info = model.model_fields[field]
    limit = find(info.annotation)
    if limit is None:
        limit = next((m.max_length for m in info.metadata if isinstance(getattr(m, "max_length", None), int)), None)
    if limit is None:
        raise KeyError(f"{model.__name__}.{field} has no maximum length")
    return int(limit)
