"""`blueprint show --top N` lists the N best-ranked modules, in rank order, wherever they stand in
the document; a negative N is a usage-error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blueprint_format.cli import main
from tests.format.builders import make_doc


def _reversed_blueprint(tmp_path: Path) -> tuple[Path, list[tuple[str, int]]]:
    """A valid blueprint whose best-ranked modules come last in the document."""
    doc = make_doc(layers=3)
    doc["modules"].reverse()
    path = tmp_path / "bp.json"
    path.write_text(json.dumps(doc))
    ranks = [(m["name"], m["stats"]["general"]["rank"]) for m in doc["modules"]]
    return path, ranks


def _listed(text: str) -> list[str]:
    rows = text.split("Modules (", 1)[1].split("\n\n", 1)[0].splitlines()[3:]
    return [r.split()[0] for r in rows if r.strip() and not r.startswith("  ...")]


def test_top_lists_the_best_ranked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, ranks = _reversed_blueprint(tmp_path)
    by_rank = [name for name, _ in sorted(ranks, key=lambda t: t[1])]
    assert by_rank[:2] != [name for name, _ in ranks][:2]  # the document order differs
    assert main(["show", str(path), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert _listed(out) == by_rank[:2]
    assert "4 more, ranked below" in out
    assert main(["show", str(path)]) == 0
    assert _listed(capsys.readouterr().out) == [name for name, _ in ranks]  # all, in document order


def test_negative_top_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = _reversed_blueprint(tmp_path)
    assert main(["show", str(path), "--top", "-1"]) == 2
    assert capsys.readouterr().err.startswith("error: usage-error at --top: ")
