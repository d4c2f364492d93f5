"""`blueprint show` displays each domain's stability record of spec 1.1 (SPEC 7.7): the bootstrap's
settings, rank correlation and selection overlap per domain, the modules' intervals, and the median
relative interval width, in text and in --json; a document without one says so."""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from blueprint_format.cli import main
from tests.format.builders import make_doc

VECTOR = Path(__file__).resolve().parents[2] / "spec" / "compliance" / "valid" / "stability.json"


def _show(capsys: pytest.CaptureFixture[str], path: Path, *flags: str) -> str:
    assert main(["show", str(path), *flags]) == 0
    return capsys.readouterr().out


def _section(text: str, title: str) -> list[str]:
    """The lines of a text section, from its title to the next blank line."""
    return text.split(f"\n{title}", 1)[1].split("\n\n", 1)[0].splitlines()


def _median_width(doc: dict[str, Any], domain: str, statistic: str) -> float:
    """The naive figure: median over modules of (upper - lower) / value."""
    return statistics.median(
        (s["interval"]["upper"] - s["interval"]["lower"]) / s[statistic]
        for m in doc["modules"] if (s := m["stats"].get(domain)) and "interval" in s
    )


def _with_stability(estimator: str) -> dict[str, Any]:
    """make_doc's blueprint in spec 1.1 with a stability on its second domain only."""
    doc = make_doc(layers=3, domains=("general", "code"))
    doc["spec_version"] = "1.1.0"
    doc["method"]["estimator"] = estimator
    doc["domains"][1]["stability"] = {
        "method": "batch-bootstrap", "statistic": "grad_norm_median", "resamples": 50, "confidence": 0.95,
        "rank_correlation": 0.5, "selection": {"budget": 0.25, "overlap": 0.75},
    }
    for i, m in enumerate(doc["modules"]):
        value = m["stats"]["code"]["grad_norm_median"]
        m["stats"]["code"]["interval"] = {"lower": value * (1 - 0.1 * (i + 1)), "upper": value * 1.05}
    return doc


def test_the_compliance_vector_shows_its_record(capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(VECTOR.read_text(encoding="utf-8"))
    out = _show(capsys, VECTOR)
    stab = doc["domains"][0]["stability"]
    rows = [r.split() for r in _section(out, "Stability (")[3:] if not r.startswith("  ")]
    assert rows == [[
        "general", stab["method"], stab["statistic"], str(stab["resamples"]), "90%", str(stab["seed"]),
        f"{stab['rank_correlation']:.3f}", f"{stab['selection']['overlap']:.3f}", f"{stab['selection']['budget']:.3g}",
        f"{_median_width(doc, 'general', stab['statistic']):.3g}", str(doc["domains"][0]["batches"]),
    ]]
    assert "  not recorded for: biomedical" in out
    modules = _section(out, "Modules (")
    assert "90% CI[general]" in modules[1] and "CI[biomedical]" not in modules[1]
    listed = {r.split()[0]: r for r in modules[3:]}
    assert len(listed) == len(doc["modules"])
    for m in doc["modules"]:
        interval = m["stats"]["general"]["interval"]
        assert f"[{interval['lower']:.4g}, {interval['upper']:.4g}]" in listed[m["name"]]


def test_json_carries_the_record_and_the_intervals(capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(VECTOR.read_text(encoding="utf-8"))
    summary = json.loads(_show(capsys, VECTOR, "--json"))
    by_name = {d["name"]: d for d in summary["domains"]}
    assert by_name["general"]["stability"] == doc["domains"][0]["stability"]
    assert by_name["general"]["median_relative_interval_width"] == pytest.approx(
        _median_width(doc, "general", "grad_norm_mean"), rel=1e-12)
    assert by_name["biomedical"]["stability"] is None
    assert by_name["biomedical"]["median_relative_interval_width"] is None
    for shown, m in zip(summary["modules"], doc["modules"]):
        assert shown["interval"] == {"general": m["stats"]["general"]["interval"]}


def test_units_follow_the_estimator_and_the_statistic_is_the_resampled_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for estimator, units in (("batch-gradient-norm", "2"), ("per-example-gradient-norm", "64")):
        doc = _with_stability(estimator)
        path = tmp_path / f"{estimator}.json"
        path.write_text(json.dumps(doc), encoding="utf-8")
        out = _show(capsys, path)
        row = next(r.split() for r in _section(out, "Stability (")[3:] if r.startswith("code "))
        width = _median_width(doc, "code", "grad_norm_median")
        assert width != pytest.approx(_median_width(doc, "code", "grad_norm_mean"))  # the statistic matters
        assert row[2] == "grad_norm_median" and row[4] == "95%" and row[5] == "-"  # no seed recorded
        assert row[-2:] == [f"{width:.3g}", units]
        assert "  not recorded for: general" in out
        header = _section(out, "Modules (")[1]
        assert header.index("Grad[code]") < header.index("95% CI[code]") < header.index("rank[")


def test_a_document_without_stability_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bp.json"
    path.write_text(json.dumps(make_doc(layers=2)), encoding="utf-8")
    out = _show(capsys, path)
    assert "Stability: not recorded" in out and "CI[" not in out
    summary = json.loads(_show(capsys, path, "--json"))
    assert [d["stability"] for d in summary["domains"]] == [None]
    assert all(m["interval"] == {} for m in summary["modules"])


def test_show_refuses_an_incomplete_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _with_stability("batch-gradient-norm")
    broken = copy.deepcopy(doc)
    del broken["modules"][0]["stats"]["code"]["interval"]
    path = tmp_path / "bp.json"
    path.write_text(json.dumps(broken), encoding="utf-8")
    assert main(["show", str(path)]) == 1
    assert "stability-incomplete" in capsys.readouterr().err
