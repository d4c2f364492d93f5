"""Pydantic v2 models of a spec v1 blueprint.

They accept exactly what `spec/v1/blueprint.schema.json` accepts (tests prove it on every
compliance vector and on documents drawn from the schema). Models are strict: no coercion of
strings to numbers, no unknown members outside `extensions`. Optional members are `None` when
absent and are omitted again on output, so a document never contains `null`.
"""

from __future__ import annotations

import copy
import math
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    model_validator,
)

from blueprint_format.limits import MAX_MODULES, MAX_SAFE_INTEGER
from blueprint_format.pointer import put


def _integral(value: Any) -> Any:
    # JSON Schema counts 5.0 as an integer; so must we, or the two would disagree.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _json_safe(value: Any) -> Any:
    # Free-form values (extensions, x- rule parameters) follow the reader's number rule: integers
    # beyond 2**53 - 1 are doubles, as RFC 8785 and a JavaScript reader treat them.
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) > MAX_SAFE_INTEGER:
        try:
            return float(value)
        except OverflowError:
            raise ValueError("integer too large for a double") from None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


#: Validation context of a document that came from the strict reader (blueprint_format.jsonio),
#: whose free-form values are already plain JSON with double-safe numbers.
PARSED_CONTEXT = {"parsed_json": True}


def _free_json(value: Any, info: ValidationInfo) -> Any:
    """A free-form JSON value, checked in one iterative pass without copying it.

    Skipped for documents from the strict reader, which checked the same while parsing, so that
    a large extension is not walked (or copied) twice. Copies only to turn integers beyond
    2**53 - 1 into doubles.
    """
    if info.context is not None and info.context.get("parsed_json"):
        return value
    stack: list[Any] = [value]
    big_integers = False
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is dict:
            if not all(type(k) is str for k in node):
                raise ValueError("object member names must be strings")
            stack.extend(node.values())
            stack.extend(node)  # the names, checked like strings
        elif kind is list:
            stack.extend(node)
        elif kind is int:
            big_integers |= not -MAX_SAFE_INTEGER <= node <= MAX_SAFE_INTEGER
        elif kind is float:
            if not math.isfinite(node):
                raise ValueError(f"{node} is not a finite number")
        elif kind is str:
            if not node.isascii() and any(0xD800 <= ord(ch) <= 0xDFFF for ch in node):
                raise ValueError("a string holds a lone UTF-16 surrogate (RFC 8785, I-JSON)")
        elif not (node is None or kind is bool):
            raise ValueError(f"a {kind.__name__} is not a JSON value")
    if not big_integers:
        return value
    try:
        return _json_safe(value)
    except RecursionError:
        raise ValueError("nested too deeply to convert its large integers") from None


FreeJson = Annotated[Any, AfterValidator(_free_json)]
Count = Annotated[int, BeforeValidator(_integral), Field(ge=0, le=MAX_SAFE_INTEGER)]
PositiveCount = Annotated[int, BeforeValidator(_integral), Field(ge=1, le=MAX_SAFE_INTEGER)]
Statistic = Annotated[float, Field(ge=0, le=1e300)]
Fraction = Annotated[float, Field(ge=0, le=1)]
OpenFraction = Annotated[float, Field(gt=0, le=1)]
Digest = Annotated[str, Field(min_length=71, max_length=71, pattern=r"^sha256:[0-9a-f]{64}$")]
#: Domain names (and other short names): the one pattern every reader and writer checks.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN)]
ModuleName = Annotated[
    str, Field(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,511}$")
]
Timestamp = Annotated[
    str,
    Field(
        max_length=40,
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$",
    ),
]
ExtensionName = Annotated[
    str, Field(max_length=128, pattern=r"^(x-[a-z0-9][a-z0-9_.-]*|[a-z0-9-]+(\.[a-z0-9-]+)+)$")
]
NonEmpty64 = Annotated[str, Field(min_length=1, max_length=64)]
NonEmpty128 = Annotated[str, Field(min_length=1, max_length=128)]
NonEmpty256 = Annotated[str, Field(min_length=1, max_length=256)]
Text1024 = Annotated[str, Field(min_length=0, max_length=1024)]
NonEmpty1024 = Annotated[str, Field(min_length=1, max_length=1024)]
Text4096 = Annotated[str, Field(min_length=0, max_length=4096)]
StatisticName = Literal["grad_norm_mean", "grad_norm_median", "grad_norm_sq_mean", "mean_grad_norm"]
#: The statistics a bootstrap over per-unit gradient norms can recompute (SPEC 7.7).
StabilityStatistic = Literal["grad_norm_mean", "grad_norm_median", "grad_norm_sq_mean"]
# Choices used by producers and CLIs too: derive them with typing.get_args, never restate them.
Granularity = Literal["module", "row", "element"]
Precision = Literal["fp32", "fp16", "bf16", "fp64", "bf16-autocast", "fp16-autocast"]
Direction = Literal["highest", "lowest"]
SidecarGranularity = Literal["row", "element"]


class _Strict(BaseModel):
    # No populate_by_name: the schema knows only "$schema", never the Python name schema_uri.
    model_config = ConfigDict(strict=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_null_members(cls, data: Any) -> Any:
        # Optional members are absent, never null: the schema gives no member a null type.
        if isinstance(data, dict):
            for key, value in data.items():
                if value is None:
                    raise ValueError(f"member {key!r} is null; leave optional members out instead")
        return data


class Model(_Strict):
    """The model a blueprint describes (its binding)."""

    name: NonEmpty256
    revision: NonEmpty256
    architecture: NonEmpty256 | None = None
    structure_digest: Digest
    weights_digest: Digest | None = None
    tensor_count: PositiveCount | None = None
    parameter_count: PositiveCount | None = None


class Generator(_Strict):
    name: NonEmpty128
    version: NonEmpty64


class Provenance(_Strict):
    """When, by what and by whom the blueprint was made, and which blueprint it replaces."""

    created: Timestamp
    generator: Generator
    publisher: NonEmpty256 | None = None
    supersedes: Digest | None = None
    change_note: Text4096 | None = None


class Method(_Strict):
    """How the statistics were estimated."""

    estimator: Literal["batch-gradient-norm", "per-example-gradient-norm"]
    loss: NonEmpty128
    batch_size: PositiveCount | None = None
    seq_len: PositiveCount | None = None
    precision: Precision | None = None
    seed: Count | None = None
    device_kind: NonEmpty64 | None = None
    world_size: PositiveCount | None = None
    min_examples_per_aggregate: PositiveCount


class MassShares(_Strict):
    """Share of the summed statistic held by the top 1/5/10/20/50 percent of items."""

    top_1: Fraction
    top_5: Fraction
    top_10: Fraction
    top_20: Fraction
    top_50: Fraction

    def as_pairs(self) -> list[tuple[float, float]]:
        """(top fraction, share) pairs in increasing order of the fraction."""
        return [
            (0.01, self.top_1),
            (0.05, self.top_5),
            (0.10, self.top_10),
            (0.20, self.top_20),
            (0.50, self.top_50),
        ]


class HeavyTail(_Strict):
    """A heavy-tail fit of one statistic across modules, with its exponent convention."""

    statistic: StatisticName
    method: Annotated[str, Field(pattern=r"^(csn-mle|x-[a-z0-9][a-z0-9.-]{0,62})$")]
    exponent_convention: Literal["pdf", "tail-index", "rank-size"]
    status: Literal["ok", "failed", "insufficient-data"]
    exponent: Annotated[float, Field(gt=0, le=1e6)] | None = None
    x_min: Statistic | None = None
    ks_distance: Fraction | None = None
    sample_count: Count
    tail_count: Count | None = None
    message: Text1024 | None = None
    mass_shares: MassShares


class StabilitySelection(_Strict):
    """Expected overlap of module selections at `budget` between bootstrap resamples (SPEC 7.7)."""

    budget: OpenFraction
    overlap: Fraction


class Stability(_Strict):
    """How much a domain's statistics and ranking move between draws of its units (SPEC 7.7, since 1.1)."""

    method: Annotated[str, Field(pattern=r"^(batch-bootstrap|x-[a-z0-9][a-z0-9.-]{0,62})$")]
    statistic: StabilityStatistic
    resamples: Annotated[int, BeforeValidator(_integral), Field(ge=2, le=MAX_SAFE_INTEGER)]
    confidence: Annotated[float, Field(gt=0, lt=1)]
    seed: Count | None = None
    rank_correlation: Annotated[float, Field(ge=-1, le=1)]
    selection: StabilitySelection | None = None


class Interval(_Strict):
    """A bootstrap confidence interval of one module's statistic on one domain (SPEC 7.7, since 1.1)."""

    lower: Statistic
    upper: Statistic


class Domain(_Strict):
    """A calibration domain with its default weight and its data's aggregate description."""

    name: Name
    weight: Fraction
    description: Text4096 | None = None
    source: Text1024 | None = None
    examples: PositiveCount
    batches: PositiveCount
    tokens: PositiveCount | None = None
    data_fingerprint: Digest | None = None
    heavy_tail: HeavyTail | None = None
    element_mass_shares: MassShares | None = None
    stability: Stability | None = None


class ModuleStats(_Strict):
    """Gradient statistics of one module on one domain."""

    grad_norm_mean: Statistic
    grad_norm_median: Statistic
    grad_norm_sq_mean: Statistic
    mean_grad_norm: Statistic | None = None
    rank: PositiveCount
    interval: Interval | None = None


class Combined(_Strict):
    """The module's score and rank under the allocation's domain weights."""

    score: Statistic
    rank: PositiveCount


class Module(_Strict):
    """One submodule: its size, per-domain statistics and recommended update fraction."""

    name: ModuleName
    type: NonEmpty128 | None = None
    parameter_count: PositiveCount
    stats: Annotated[dict[Name, ModuleStats], Field(min_length=1, max_length=256)]
    combined: Combined | None = None
    k_star: OpenFraction | None = None


class CostModel(_Strict):
    """C(k) = fixed + per_parameter * trainable parameters, in `unit`."""

    name: Literal["linear"]
    fixed: Statistic
    per_parameter: Statistic
    unit: NonEmpty64


class GlobalBudgetParameters(_Strict):
    budget: OpenFraction


class GlobalBudgetRule(_Strict):
    """Select by score until `budget` of all parameters is trainable."""

    name: Literal["global-budget"]
    parameters: GlobalBudgetParameters


class MassThresholdParameters(_Strict):
    threshold: OpenFraction


class MassThresholdRule(_Strict):
    """Select by score until the selected modules hold `threshold` of the summed statistic."""

    name: Literal["mass-threshold"]
    parameters: MassThresholdParameters


class MarginalParameters(_Strict):
    eta: Statistic
    max_fraction: OpenFraction | None = None


class MarginalRule(_Strict):
    """Grow the selection while marginal gain per marginal cost stays above `eta`."""

    name: Literal["marginal"]
    parameters: MarginalParameters


class CustomRule(_Strict):
    """A rule outside the spec, named with an `x-` prefix."""

    name: Annotated[str, Field(pattern=r"^x-[a-z0-9][a-z0-9.-]{0,62}$")]
    parameters: Annotated[dict[str, FreeJson], Field(max_length=64)]


Rule = Union[GlobalBudgetRule, MassThresholdRule, MarginalRule, CustomRule]


class Allocation(_Strict):
    """The rule, statistic, granularity and cost model that produced every k*."""

    rule: Rule
    statistic: StatisticName
    granularity: Granularity
    gain_model: NonEmpty128 | None = None
    cost_model: CostModel
    domain_weights: Annotated[dict[Name, Fraction], Field(min_length=1, max_length=256)] | None = None
    trainable_fraction: Fraction | None = None


class ScoreQuantiles(_Strict):
    p10: Statistic
    p50: Statistic
    p90: Statistic


class DataSelection(_Strict):
    """Aggregate summary of a data-selection run (never per-example values)."""

    method: NonEmpty128
    domain: Name | None = None
    direction: Direction
    fraction: OpenFraction
    drop_top_fraction: Fraction | None = None
    examples_total: PositiveCount
    examples_selected: Count
    score_quantiles: ScoreQuantiles | None = None


class Sidecar(_Strict):
    """A file of element- or row-level scores next to the blueprint, bound by digest."""

    path: NonEmpty1024
    digest: Digest
    format: Literal["safetensors"]
    granularity: SidecarGranularity
    statistic: NonEmpty128 | None = None


class Blueprint(_Strict):
    """A gradient blueprint document (spec v1)."""

    schema_uri: Annotated[Annotated[str, Field(max_length=2048)] | None, Field(alias="$schema")] = None
    spec_version: Annotated[str, Field(pattern=r"^1\.(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})$")]
    description: Text4096 | None = None
    model: Model
    provenance: Provenance
    method: Method
    domains: Annotated[list[Domain], Field(min_length=1, max_length=256)]
    modules: Annotated[list[Module], Field(min_length=1, max_length=MAX_MODULES)]
    allocation: Allocation
    data_selection: DataSelection | None = None
    sidecars: Annotated[list[Sidecar], Field(max_length=64)] | None = None
    extensions: Annotated[dict[ExtensionName, FreeJson], Field(max_length=256)] | None = None
    #: Members of a newer minor version that this reader ignored: (JSON pointer, value).
    _ignored_members: tuple[tuple[str, Any], ...] = PrivateAttr(default=())

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values, absent optional members omitted, ignored newer members put back."""
        out: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        for pointer, value in self._ignored_members:
            put(out, pointer, copy.deepcopy(value))
        return out

    def keep_ignored_members(self, members: list[tuple[str, Any]]) -> None:
        """Keep the members of a newer minor version that validation ignored (SPEC 13 and 14).

        `to_json` writes them back at their JSON pointers, so the digest, the canonical form and
        every embedded copy cover the whole document, as SPEC 13 requires. (A pointer whose place
        was edited away in the model since is skipped.)
        """
        self._ignored_members = tuple(sorted(members, key=lambda m: m[0]))  # order-free equality

    @property
    def ignored_members(self) -> tuple[tuple[str, Any], ...]:
        """The (JSON pointer, value) of each member that this reader ignored."""
        return self._ignored_members

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.domains]

    def domain(self, name: str) -> Domain:
        """The domain called `name` (KeyError if absent)."""
        for d in self.domains:
            if d.name == name:
                return d
        raise KeyError(name)

    def module(self, name: str) -> Module:
        """The module called `name` (KeyError if absent)."""
        for m in self.modules:
            if m.name == name:
                return m
        raise KeyError(name)

    def effective_domain_weights(self) -> dict[str, float]:
        """The allocation's domain weights, or the domains' defaults when it names none."""
        if self.allocation.domain_weights is not None:
            return dict(self.allocation.domain_weights)
        return {d.name: d.weight for d in self.domains}
