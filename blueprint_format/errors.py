"""Stable error codes, the `Issue` record and the `BlueprintError` hierarchy.

`ERROR_CODES` is the single table of codes: SPEC.md's error-code table is checked against it by a
test, and the validator, the CLI and the converters only ever report codes listed here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any


class Severity(str, Enum):
    """How bad an issue is. Only errors make a document invalid."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class ErrorCode:
    """One row of the error-code table."""

    code: str
    layer: str  # parse, limit, version, schema, semantic, binding, container, compute, io or usage
    summary: str


def _table(*rows: tuple[str, str, str]) -> dict[str, ErrorCode]:
    return {code: ErrorCode(code, layer, summary) for code, layer, summary in rows}


ERROR_CODES: dict[str, ErrorCode] = _table(
    # Parsing: the bytes are not a JSON document this spec accepts.
    ("empty-document", "parse", "The document is empty or only whitespace."),
    ("not-utf8", "parse", "The document is not valid UTF-8."),
    ("parse-error", "parse", "The document is not well-formed JSON (RFC 8259)."),
    ("duplicate-key", "parse", "An object has the same member name twice."),
    ("non-finite-number", "parse", "A number is NaN, Infinity or overflows a double."),
    ("lone-surrogate", "parse", "A string or member name holds a lone UTF-16 surrogate (RFC 8785, I-JSON)."),
    ("not-an-object", "parse", "The top-level value is not a JSON object."),
    # Limits: refused before or instead of full processing.
    ("too-large", "limit", "The document exceeds the maximum size."),
    ("too-deep", "limit", "The document nests deeper than the maximum depth."),
    ("too-many-values", "limit", "The document holds more JSON values than the maximum."),
    ("too-many-modules", "limit", "The document lists more modules than the maximum."),
    # Version handling.
    ("unsupported-version", "version", "spec_version has a major version this reader does not support."),
    ("bad-version", "version", "spec_version is missing or not a MAJOR.MINOR.PATCH version."),
    # Structure (JSON Schema).
    ("missing-field", "schema", "A required member is absent."),
    ("unknown-field", "schema", "A member is not defined by the spec (outside `extensions`)."),
    ("wrong-type", "schema", "A value has the wrong JSON type."),
    ("out-of-range", "schema", "A number or count lies outside its allowed range."),
    ("negative-statistic", "schema", "A gradient statistic is negative or not finite."),
    ("k-star-out-of-range", "schema", "k_star is not in (0, 1]."),
    ("bad-digest", "schema", "A digest is not `sha256:` followed by 64 lowercase hex digits."),
    ("bad-name", "schema", "A domain or module name does not match the allowed pattern."),
    ("bad-format", "schema", "A string does not have the required format (e.g. a timestamp)."),
    ("bad-enum", "schema", "A value is not one of the allowed choices."),
    ("bad-rule", "schema", "The allocation rule is unknown or its parameters do not fit it."),
    ("bad-extension-name", "schema", "An extension member name is not reverse-DNS or `x-` prefixed."),
    ("schema-violation", "schema", "Another structural constraint of the schema is violated."),
    # Semantic rules beyond the schema.
    ("duplicate-module", "semantic", "Two modules have the same name."),
    ("duplicate-domain", "semantic", "Two domains have the same name."),
    (
        "overlapping-modules",
        "semantic",
        "One module's name is a dotted prefix of another's (e.g. `a` and `a.b`), so their tensors overlap.",
    ),
    ("unknown-domain", "semantic", "A reference names a domain that `domains` does not declare."),
    ("missing-domain-stats", "semantic", "A module lacks statistics for a declared domain."),
    ("rank-not-permutation", "semantic", "Ranks within a domain (or combined) are not 1..N."),
    ("rank-order-mismatch", "semantic", "A higher-ranked module has a smaller ranking statistic."),
    (
        "inconsistent-statistics",
        "semantic",
        "Statistics contradict each other (e.g. mean square < squared mean).",
    ),
    (
        "shares-not-monotone",
        "semantic",
        "Mass shares are not non-decreasing, or fall below their proportional share.",
    ),
    (
        "fit-status-mismatch",
        "semantic",
        "A heavy-tail fit's status disagrees with the presence of its numbers.",
    ),
    (
        "inconsistent-fit",
        "semantic",
        "Heavy-tail fit numbers contradict each other (e.g. tail_count > sample_count).",
    ),
    ("domain-weights-sum", "semantic", "Domain weights do not sum to 1."),
    (
        "aggregate-too-small",
        "semantic",
        "An aggregate covers fewer examples than min_examples_per_aggregate.",
    ),
    ("budget-exceeded", "semantic", "k_star values select more parameters than the rule's budget allows."),
    (
        "parameter-count-mismatch",
        "semantic",
        "Module parameter counts exceed the model's, or disagree with the model file.",
    ),
    ("unsafe-path", "semantic", "A sidecar path is absolute, escapes its folder, or is otherwise unsafe."),
    ("data-selection-inconsistent", "semantic", "The data-selection counts contradict each other."),
    (
        "stability-incomplete",
        "semantic",
        "A domain's stability lacks a module's interval, or an interval has no stability on its domain.",
    ),
    # Binding to a model (validate --against, embed).
    ("structure-digest-mismatch", "binding", "The blueprint was made for a model with other tensors."),
    ("module-not-in-model", "binding", "A module name matches no tensor of the model."),
    ("unreadable-model", "binding", "The model's headers could not be read."),
    ("model-module-not-in-blueprint", "binding", "The model has trainable modules that the blueprint does not describe."),
    (
        "not-comparable",
        "binding",
        "Two blueprints cannot be compared: they describe different models or share no module or domain.",
    ),
    # Warnings.
    ("unknown-member", "version", "A newer minor version's member was ignored (warning)."),
    # Containers (converters).
    ("no-blueprint", "container", "The target holds no blueprint."),
    ("header-too-large", "container", "A safetensors header exceeds the 100 MB cap."),
    ("bad-container", "container", "The container file is malformed."),
    ("unsupported-container", "container", "No converter handles this target."),
    ("unsafe-checkpoint", "container", "A checkpoint needs arbitrary unpickling; it is refused."),
    (
        "untrusted-code",
        "container",
        "A model folder names its own Python code (auto_map); it is refused unless explicitly trusted.",
    ),
    ("write-failed", "container", "The target could not be written; the original is unchanged."),
    # Computation (the reference implementation and other producers).
    ("non-finite-gradient", "compute", "A calibration batch produced NaN or infinite gradients; nothing was written."),
    ("out-of-memory", "compute", "The device ran out of memory; lower the batch size or sequence length."),
    ("no-trainable-parameters", "compute", "The model has no trainable parameters that its weight files hold."),
    ("unsupported-model", "compute", "The model or its wrapping (e.g. FSDP sharding) is not supported."),
    ("compute-failed", "compute", "The model's forward or backward pass failed on the given data."),
    ("empty-domain", "compute", "A calibration domain has no batches."),
    ("unsupported-module", "compute", "A selected module's type does not support the requested granularity."),
    # Input/output and usage (exit status 2).
    ("io-error", "io", "A file could not be read or written."),
    ("not-a-regular-file", "io", "A path names a FIFO, device, socket, folder or symlink where a regular file is needed."),
    ("usage-error", "usage", "A command-line flag or argument is missing, unknown or malformed."),
)


@dataclass(frozen=True)
class Issue:
    """One finding of the validator.

    `path` is a JSON pointer (RFC 6901) into the document; for parse errors it is "" and `line`
    and `column` say where in the text the problem is.
    """

    code: str
    path: str
    message: str
    severity: Severity = Severity.ERROR
    line: int | None = None
    column: int | None = None

    def __post_init__(self) -> None:
        if self.code not in ERROR_CODES:
            raise ValueError(f"unregistered error code {self.code!r}")

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def to_json(self) -> dict[str, Any]:
        """The issue as a JSON object (severity as its string, absent locations omitted)."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out["severity"] = self.severity.value
        return out

    def __str__(self) -> str:
        where = self.path or "/"
        if self.line is not None:
            where = f"line {self.line} column {self.column}"
        return f"{self.code} at {where}: {self.message}"


class BlueprintError(Exception):
    """Root of every error this project raises for bad input. Carries its issues."""

    exit_status = 1

    def __init__(self, issues: list[Issue] | Issue) -> None:
        self.issues: list[Issue] = [issues] if isinstance(issues, Issue) else list(issues)
        super().__init__("; ".join(str(i) for i in self.issues))

    @property
    def code(self) -> str:
        return self.issues[0].code


class BlueprintParseError(BlueprintError):
    """The bytes are not an acceptable JSON document."""


class BlueprintValidationError(BlueprintError):
    """The document parses but breaks the schema or a semantic rule."""


class BindingError(BlueprintError):
    """The blueprint does not describe the given model."""


class ContainerError(BlueprintError):
    """A model container is malformed, holds no blueprint, or could not be written."""


class BlueprintIOError(BlueprintError):
    """A file could not be read or written (exit status 2)."""

    exit_status = 2


def make_error(code: str, message: str, path: str = "", **kw: Any) -> Issue:
    """Shorthand for an error-severity Issue."""
    return Issue(code=code, path=path, message=message, **kw)

class UsageError(BlueprintIOError):
    """A command-line flag or argument is missing, unknown or malformed (exit status 2)."""


def usage_error(message: str, path: str = "") -> UsageError:
    """A `usage-error` for a flag mistake; `path` names the flag (e.g. "--batch-size")."""
    return UsageError(make_error("usage-error", message, path))
