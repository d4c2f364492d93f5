"""Pieces of `make demo` that run fast: corpus pairs, the printed table and fits, the plots."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_impl import compliance, demo

VECTOR = Path(__file__).resolve().parents[2] / "spec" / "compliance" / "compute"


def test_corpus_pairs_are_real_dialogue_turns() -> None:
    pairs = demo.corpus_pairs("ai", 1000)
    assert len(pairs) == 105
    assert all(isinstance(a, str) and isinstance(b, str) and a and b for a, b in pairs)
    assert demo.corpus_pairs("trivia", 128)[:3] == demo.corpus_pairs("trivia", 3)


def test_table_fits_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bp = compliance.compute(VECTOR)
    demo.print_table(bp)
    demo.print_fits(bp)
    out = capsys.readouterr().out
    assert "layers.0" in out and "head" in out and "pdf alpha" in out and "rank-size" in out
    paths = demo.plot(bp, tmp_path)
    assert [p.name for p in paths] == ["grad_norm_vs_rank.png", "k_star_per_module.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
