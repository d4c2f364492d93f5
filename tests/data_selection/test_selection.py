"""Selection rules, the summary and the scores file (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference_impl.data_selection import (
    quantile,
    read_scores,
    select_indices,
    selected_count,
    selection_summary,
    write_scores,
)
from reference_impl.errors import ComputeError, ComputeInputError

D = "sha256:" + "ab" * 32


@given(st.integers(1, 500), st.floats(1e-6, 1.0))
def test_selected_count_within_one(total: int, fraction: float) -> None:
    k = selected_count(total, fraction)
    assert 1 <= k <= total and abs(k - fraction * total) <= 1


@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=60), st.floats(0.01, 0.7),
       st.floats(0, 0.29), st.sampled_from(["highest", "lowest"]))
def test_select_matches_naive(scores: list[float], fraction: float, drop: float, direction: str) -> None:
    keep = select_indices(scores, fraction, direction, drop)
    n = len(scores)
    ranked = sorted(range(n), key=lambda i: (-scores[i], i))[int(drop * n + 0.5):]
    if direction == "lowest":
        ranked = sorted(ranked, key=lambda i: (scores[i], i))
    assert keep == sorted(ranked[: selected_count(n, fraction)])
    assert keep == sorted(set(keep))


def test_ties_break_by_input_order() -> None:
    assert select_indices([1.0, 2.0, 2.0, 2.0, 0.5], 0.4) == [1, 2]
    assert select_indices([1.0, 2.0, 2.0, 2.0, 0.5], 0.4, "lowest") == [0, 4]


@pytest.mark.parametrize("fraction,drop", [(0.0, 0.0), (1.2, 0.0), (float("nan"), 0.0), (0.8, 0.3), (0.5, 1.0)])
def test_bad_fractions(fraction: float, drop: float) -> None:
    with pytest.raises(ComputeInputError) as exc:
        select_indices([1.0, 2.0], fraction, drop_top=drop)
    assert exc.value.issues[0].code == "out-of-range"


def test_non_finite_score_refused() -> None:
    with pytest.raises(ComputeError):
        select_indices([1.0, float("nan")], 0.5)


def test_quantile_is_numpy_linear() -> None:
    xs = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.0]
    for q in (0.1, 0.5, 0.9):
        assert quantile(xs, q) == pytest.approx(float(np.quantile(xs, q)))


def test_summary_validates_in_a_blueprint() -> None:
    scores = [float(i) for i in range(50)]
    summary = selection_summary(scores, 0.3, "highest", 0.1, domain=None)
    assert summary["examples_selected"] == 15 and summary["drop_top_fraction"] == 0.1
    from blueprint_format.models import DataSelection

    ds = DataSelection.model_validate(summary)
    assert ds.score_quantiles is not None and ds.score_quantiles.p50 == pytest.approx(24.5)


def test_scores_file_round_trip_and_refusals(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    write_scores(p, [0.5, 2.0, 1.25], D, data_digest_=D)
    lines = [json.loads(x) for x in p.read_text().splitlines()]
    assert lines[1] == {"index": 1, "score": 2.0, "method": "per-example-grad-norm", "structure_digest": D,
                        "modules_digest": "all", "data_digest": D}
    assert read_scores(p, D, 3, "all", D) == [0.5, 2.0, 1.25]
    with pytest.raises(ComputeInputError) as exc2:
        read_scores(p, D, 3, "all", "sha256:" + "00" * 32)  # same size, other data
    assert exc2.value.issues[0].code == "bad-digest"
    with pytest.raises(ComputeError) as exc:
        read_scores(p, "sha256:" + "cd" * 32)
    assert exc.value.issues[0].code == "structure-digest-mismatch"
    with pytest.raises(ComputeInputError):
        read_scores(p, D, 4)  # data has another size
    bad = tmp_path / "bad.jsonl"
    bad.write_text(p.read_text().replace('"index":2', '"index":5'))
    with pytest.raises(ComputeInputError):
        read_scores(bad)
    with pytest.raises(ComputeError):
        write_scores(tmp_path / "nan.jsonl", [float("nan")], D)
    assert not (tmp_path / "nan.jsonl").exists()


@given(st.lists(st.tuples(st.floats(0, 10, allow_nan=False), st.integers(0, 2)), min_size=1, max_size=60),
       st.floats(0.01, 0.7), st.floats(0, 0.29))
def test_label_balanced_selection(items: list[tuple[float, int]], fraction: float, drop: float) -> None:
    scores = [s for s, _ in items]
    labels = [y for _, y in items]
    try:
        keep = select_indices(scores, fraction, "highest", drop, labels)
    except ComputeInputError:
        return  # a small label group cannot give its quota after dropping: refused, not wrong
    n = len(items)
    assert len(keep) == selected_count(n, fraction)  # the spec's count, whatever the groups
    for y in set(labels):
        group = [i for i in range(n) if labels[i] == y]
        mine = [i for i in keep if labels[i] == y]
        assert abs(len(mine) - len(keep) * len(group) / n) <= 1 + 1e-9
        # within a label: the highest after that label's own dropped top, ties by order
        ranked = sorted(group, key=lambda i: (-scores[i], i))[int(drop * len(group) + 0.5):]
        assert sorted(mine) == sorted(ranked[: len(mine)])


def test_label_balance_counters_a_one_class_top() -> None:
    scores = [10.0 + i for i in range(10)] + [float(i) for i in range(10)]  # label 0 all higher
    labels = [0] * 10 + [1] * 10
    assert select_indices(scores, 0.4) == list(range(2, 10))
    assert select_indices(scores, 0.4, labels=labels) == [6, 7, 8, 9, 16, 17, 18, 19]
