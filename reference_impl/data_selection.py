"""Data selection by per-example gradient norms: scoring, selection, the scores file and the
blueprint's `data_selection` summary (SPEC.md section 10).

Score. An example's score is the L2 norm of the gradient of that example's own loss (the loss
the model computes for that example alone, padding excluded) with respect to the considered
modules' parameters: all trainable modules, or the modules a blueprint selects (k* set). It is
computed for every example of a batch in one forward and one backward pass
(`reference_impl.ghost_norms`), with the model in eval mode (dropout off), so scores do not
depend on the batch an example lands in beyond float rounding.

Selection. `direction="highest"` (the default) keeps the examples with the largest scores: the
ones the model is least fitted to and whose gradient moves the weights most, a first-order proxy
for influence. Very large norms are often label noise or garbled text, so `drop_top` first
discards that share of the highest-scoring examples as outliers, then keeps the top
`round(fraction * total)` of the rest (`fraction` is always a share of the whole pool, as the
spec requires; `fraction + drop_top <= 1`). `direction="lowest"` keeps the smallest scores (the
easiest examples) instead. Ties break by input order; the selected examples keep input order.
With `labels`, selection runs within each label, keeping each label's share of the pool: with
an untrained (new) classification head, one class has larger losses and hence larger gradient
norms, and a global top-q can become nearly one-class (benchmarks/combined_budget.py shows it).

Scores file (JSON Lines, one line per input example, in input order):
``{"index": i, "score": s, "method": ..., "structure_digest": ..., "modules_digest": ...,
"data_digest": ...}``. Each line carries the method and the digests so that a file stays
self-describing when cut or concatenated: `structure_digest` is the scored model's (SPEC:
structure digest of its weight files), `modules_digest` is SHA-256 of the considered module names
(sorted, joined by LF), or "all" when every trainable module counted, and `data_digest` is the
data fingerprint of the scored examples (`data_fingerprint`: SHA-256 of their texts joined by LF,
as blueprints fingerprint calibration data). A reused file (`read_scores`) is refused when any does not match. This module imports no torch at module level: selecting from a saved scores
file needs none.
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blueprint_format.atomic import atomic_write_bytes
from blueprint_format.jsonio import sha256_digest
from blueprint_format.models import Direction
from reference_impl.errors import compute_error, input_error

#: The scoring method recorded in the scores file and in the blueprint summary.
METHOD = "per-example-grad-norm"
DIRECTIONS: tuple[str, ...] = typing.get_args(Direction)
ALL_MODULES = "all"


@dataclass
class ScoreResult:
    """Scores of a data pool, in input order, and how they were obtained."""

    scores: list[float]
    modules: list[str]
    methods: list[str]
    modules_digest: str = ALL_MODULES
    unsupported: dict[str, str] = field(default_factory=dict)
    sq_norms: Any = None  # modules x examples tensor (squared norms), when kept


def modules_digest(names: Iterable[str] | None) -> str:
    """"all", or sha256 of the sorted module names joined by LF."""
    if names is None:
        return ALL_MODULES
    return sha256_digest("\n".join(sorted(names)).encode("utf-8"))


def selected_count(total: int, fraction: float) -> int:
    """round(fraction * total), at least 1: within 1 of fraction * total, as SPEC section 10 requires."""
    return max(1, min(total, math.floor(fraction * total + 0.5)))


def check_fraction(fraction: float, drop_top: float = 0.0) -> None:
    """Refuse a fraction outside (0, 1], a drop_top outside [0, 1) or a sum above 1."""
    if not (isinstance(fraction, (int, float)) and math.isfinite(fraction) and 0 < fraction <= 1):
        raise input_error("out-of-range", f"fraction {fraction!r} must lie in (0, 1]")
    if not (math.isfinite(drop_top) and 0 <= drop_top < 1):
        raise input_error("out-of-range", f"drop-top {drop_top!r} must lie in [0, 1)")
    if fraction + drop_top > 1 + 1e-9:
        raise input_error(
            "out-of-range", f"fraction {fraction} + drop-top {drop_top} exceeds 1: not enough examples would remain"
        )


def _quotas(sizes: Sequence[int], total: int) -> list[int]:
    """Split `total` over groups in proportion to their sizes (largest remainder, ties by order)."""
    n = sum(sizes)
    exact = [total * s / n for s in sizes]
    base = [math.floor(e) for e in exact]
    order = sorted(range(len(sizes)), key=lambda g: (-(exact[g] - base[g]), g))
    for g in order[: total - sum(base)]:
        base[g] += 1
    return base


def _rank(indices: Sequence[int], scores: Sequence[float], keep: int, direction: str, drop: int) -> list[int]:
    by_high = sorted(indices, key=lambda i: (-scores[i], i))
    pool = by_high[drop:]
    if direction == "lowest":
        pool = sorted(pool, key=lambda i: (scores[i], i))
    return pool[:keep]


def select_indices(
    scores: Sequence[float],
    fraction: float,
    direction: str = "highest",
    drop_top: float = 0.0,
    labels: Sequence[Any] | None = None,
) -> list[int]:
    """Indices (ascending, i.e. input order) of the examples kept; see the module docstring.

    `labels` (one per example): select within each label instead, keeping every label's share of
    the pool (quotas by largest remainder, so the total is still round(fraction * total)); the
    top drop_top of each label is dropped first. Without it a pool can end up nearly one-class:
    an untrained head gives one class larger losses, hence larger gradient norms.
    """
    check_fraction(fraction, drop_top)
    if direction not in DIRECTIONS:
        raise input_error("bad-enum", f"direction must be one of {DIRECTIONS}")
    n = len(scores)
    if n == 0:
        raise input_error("empty-document", "no examples to select from")
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise compute_error("non-finite-number", f"example {bad[0]} has a non-finite score ({len(bad)} in all)")
    k = selected_count(n, fraction)
    if labels is None:
        groups = [list(range(n))]
    else:
        if len(labels) != n:
            raise input_error("out-of-range", f"{len(labels)} labels for {n} scores")
        by_label: dict[Any, list[int]] = {}
        for i, y in enumerate(labels):
            by_label.setdefault(y, []).append(i)
        groups = list(by_label.values())
    keeps = _quotas([len(g) for g in groups], k) if len(groups) > 1 else [k]
    chosen: list[int] = []
    for g, keep in zip(groups, keeps):
        drop = math.floor(drop_top * len(g) + 0.5)
        if keep > len(g) - drop:
            raise input_error(
                "out-of-range", f"cannot keep {keep} of {len(g)} examples after dropping the top {drop}"
            )
        chosen += _rank(g, scores, keep, direction, drop)
    return sorted(chosen)


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile with linear interpolation between order statistics (numpy's default)."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def selection_summary(
    scores: Sequence[float],
    fraction: float,
    direction: str = "highest",
    drop_top: float = 0.0,
    selected: int | None = None,
    domain: str | None = None,
    method: str = METHOD,
) -> dict[str, Any]:
    """The blueprint's `data_selection` member: aggregates only, never per-example values."""
    n = len(scores)
    out: dict[str, Any] = {
        "method": method,
        "direction": direction,
        "fraction": fraction,
        "examples_total": n,
        "examples_selected": selected if selected is not None else selected_count(n, fraction),
        "score_quantiles": {
            "p10": quantile(scores, 0.1), "p50": quantile(scores, 0.5), "p90": quantile(scores, 0.9),
        },
    }
    if drop_top:
        out["drop_top_fraction"] = drop_top
    if domain is not None:
        out["domain"] = domain
    return out


def data_fingerprint(texts: Iterable[str]) -> str:
    """The data fingerprint of examples (SPEC 6): `sha256:` + hex SHA-256 of their texts' UTF-8
    bytes joined by LF. Blueprints fingerprint calibration domains with it and scores files the
    scored pool (their `data_digest`)."""
    return sha256_digest("\n".join(texts).encode("utf-8"))


def scores_bytes(
    scores: Sequence[float], structure_digest: str, modules_digest_: str = ALL_MODULES, method: str = METHOD,
    data_digest_: str = "",
) -> bytes:
    """The scores file's bytes (see the module docstring)."""
    lines = [
        json.dumps(
            {"index": i, "score": float(s), "method": method, "structure_digest": structure_digest,
             "modules_digest": modules_digest_, "data_digest": data_digest_},
            separators=(",", ":"), allow_nan=False,
        )
        for i, s in enumerate(scores)
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


def write_scores(
    path: str | Path, scores: Sequence[float], structure_digest: str, modules_digest_: str = ALL_MODULES,
    method: str = METHOD, data_digest_: str = "",
) -> None:
    """Write the scores file atomically."""
    try:
        atomic_write_bytes(path, scores_bytes(scores, structure_digest, modules_digest_, method, data_digest_))
    except ValueError:
        raise compute_error("non-finite-number", "a score is not finite; nothing written") from None
    except OSError as exc:
        raise input_error("write-failed", f"cannot write {path}: {exc.strerror or exc}") from None


def read_scores(
    path: str | Path,
    structure_digest: str | None = None,
    expected_count: int | None = None,
    modules_digest_: str | None = None,
    data_digest_: str | None = None,
) -> list[float]:
    """Scores of a scores file, checked: one line per example with indices 0..N-1 in order, finite
    non-negative scores, one method, and (when given) the model's structure digest, the
    considered modules' digest, the number of examples and the data digest."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise input_error("io-error", f"cannot read {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise input_error("not-utf8", f"{p}: not UTF-8") from None
    scores: list[float] = []
    seen: dict[str, set[str]] = {
        "method": set(), "structure_digest": set(), "modules_digest": set(), "data_digest": set(),
    }
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise input_error("parse-error", f"{p}: line {lineno}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise input_error("not-an-object", f"{p}: line {lineno}: expected an object")
        idx, score = obj.get("index"), obj.get("score")
        if isinstance(idx, bool) or not isinstance(idx, int) or idx != len(scores):
            raise input_error(
                "out-of-range", f"{p}: line {lineno}: expected index {len(scores)} (one line per example, in order)"
            )
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) or score < 0:
            raise input_error("wrong-type", f"{p}: line {lineno}: `score` must be a finite non-negative number")
        for key in seen:
            value = obj.get(key)
            if not isinstance(value, str):
                raise input_error("missing-field", f"{p}: line {lineno}: missing `{key}`")
            seen[key].add(value)
        scores.append(float(score))
    if not scores:
        raise input_error("empty-document", f"{p}: no scores")
    for key, values in seen.items():
        if len(values) > 1:
            raise input_error("inconsistent-statistics", f"{p}: lines disagree on `{key}` ({sorted(values)})")
    if seen["method"] != {METHOD}:
        raise input_error("bad-enum", f"{p}: scores by method {sorted(seen['method'])}, expected {METHOD!r}")
    if structure_digest is not None and seen["structure_digest"] != {structure_digest}:
        raise compute_error(
            "structure-digest-mismatch",
            f"{p} scores a model with structure digest {next(iter(seen['structure_digest']))}, "
            f"not this model ({structure_digest})",
        )
    if modules_digest_ is not None and seen["modules_digest"] != {modules_digest_}:
        raise compute_error(
            "structure-digest-mismatch",
            f"{p} scores other modules (modules digest {next(iter(seen['modules_digest']))}, expected {modules_digest_})",
        )
    if expected_count is not None and len(scores) != expected_count:
        raise input_error(
            "out-of-range", f"{p} has {len(scores)} scores but the data has {expected_count} examples"
        )
    if data_digest_ is not None and seen["data_digest"] != {data_digest_}:
        raise input_error(
            "bad-digest", f"{p} scores other data (data digest {next(iter(seen['data_digest']))}, expected {data_digest_})"
        )
    return scores


def blueprint_selected_modules(bp: Any, model: Any, model_path: str | Path | None = None) -> dict[str, list[Any]]:
    """Blueprint module name -> the model's parameters, for the modules the blueprint selects
    (k* set). Raises when none is selected or a selected module is not in the model."""
    from reference_impl.model_binding import module_layout

    layout = module_layout(model, model_path)
    by_name = {m.name: m.params for m in layout.modules}
    chosen = [m.name for m in bp.modules if m.k_star is not None]
    if not chosen:
        raise input_error("missing-field", "the blueprint selects no module (no k_star set)")
    missing = [n for n in chosen if n not in by_name]
    if missing:
        raise compute_error(
            "module-not-in-model", f"blueprint modules not in the model: {missing[:5]}"
        )
    return {n: list(by_name[n]) for n in chosen}


def score_batches(
    model: Any,
    batches: Iterable[Any],
    per_example_loss: Any = None,
    modules: Mapping[str, Sequence[Any]] | Iterable[str] | None = None,
    *,
    device: Any = None,
    form: str = "auto",
    progress: Any = None,
    keep_matrix: bool = False,
) -> ScoreResult:
    """Score every example of `batches` (in order) by its gradient norm; see the module docstring.

    Under torch.distributed (for example a model sharded with FSDP2: `--distributed fsdp`) each
    process scores every world_size-th batch; every process runs the same number of passes, as
    FSDP's collectives need (a process short of batches repeats one and drops its scores), and
    the per-example scores are gathered, so every process returns all of them in input order.
    Refuses non-finite scores (ComputeError non-finite-gradient, naming the batch)."""
    import torch

    from reference_impl.sharded import distributed

    listed = list(batches)
    _, rank, world = distributed()
    mine = list(range(rank, len(listed), world))
    rows = modules if isinstance(modules, Mapping) or modules is None else list(modules)
    was_training = model.training
    model.eval()
    results = []
    try:
        for i in mine:
            results.append(_score_one(model, listed[i], per_example_loss, rows, device, form))
            if progress is not None:
                progress.update(int(results[-1].scores.shape[0]) * world)
        last = results[-1] if results else None
        for _ in range(-(-len(listed) // world) - len(mine)):  # FSDP: the same passes everywhere
            last = _score_one(model, listed[mine[-1] if mine else 0], per_example_loss, rows, device, form)
    finally:
        model.train(was_training)
    _refuse_non_finite(mine, results, len(listed))
    if last is None:
        raise input_error("empty-document", "no examples to score")
    sizes = [int(r.scores.shape[0]) for r in results]
    all_sizes = _gathered_sizes(sizes, world, len(listed), results[0].scores.device if results else None)
    scores = _in_input_order(torch.cat([r.scores.double() for r in results]) if results else None, all_sizes, world)
    matrix = None
    if keep_matrix:
        m = len(last.modules)
        local = torch.cat([r.sq_norms.double().T for r in results]) if results else None
        matrix = _in_input_order(local, all_sizes, world, width=m).cpu().reshape(-1, m).T
    considered = None if modules is None else list(modules)
    return ScoreResult(
        scores.cpu().tolist(), last.modules, last.methods, modules_digest(considered), last.unsupported, matrix,
    )


def _score_one(model: Any, batch: Any, loss: Any, rows: Any, device: Any, form: str) -> Any:
    """Ghost norms of one batch (moved to `device`)."""
    from reference_impl.compute import to_device
    from reference_impl.ghost_norms import per_example_grad_norms

    if device is not None:
        batch = to_device(batch, device)
    return per_example_grad_norms(model, batch, loss, rows, form=form)


def _refuse_non_finite(mine: list[int], results: list[Any], n: int) -> None:
    """Raise on every process when any process had a batch with a non-finite score."""
    import torch

    from reference_impl.sharded import all_reduce_

    bad = [i for i, res in zip(mine, results) if not bool(torch.isfinite(res.scores).all())]
    device = results[0].scores.device if results else torch.device("cpu")
    first = -int(all_reduce_(torch.tensor([-(min(bad) if bad else n)], device=device), "max").item())
    if first < n:
        raise compute_error("non-finite-gradient", f"batch {first}: non-finite per-example gradient norm")


def _gathered_sizes(sizes: list[int], world: int, n: int, device: Any) -> list[int]:
    """Examples per batch of all batches, in input order (each process knows only its own)."""
    import torch

    from reference_impl.sharded import gather_values

    if world == 1:
        return sizes
    flat = gather_values(torch.tensor(sizes, dtype=torch.long, device=device)).tolist()
    out = [0] * n
    pos = 0
    for r in range(world):
        for i in range(r, n, world):
            out[i] = int(flat[pos])
            pos += 1
    return out


def _in_input_order(local: Any, sizes: list[int], world: int, width: int = 1) -> Any:
    """Rows of every process's batches (process r held batches r, r + world, ...) gathered and put
    back in input order; `width` values per example."""
    import torch

    from reference_impl.sharded import gather_values

    if world == 1:
        return local
    flat = gather_values(local.reshape(-1) if local is not None else torch.zeros(0, dtype=torch.float64)).cpu()
    pieces: dict[int, Any] = {}
    pos = 0
    for r in range(world):
        for i in range(r, len(sizes), world):
            pieces[i] = flat[pos : pos + sizes[i] * width]
            pos += sizes[i] * width
    return torch.cat([pieces[i] for i in range(len(sizes))])
