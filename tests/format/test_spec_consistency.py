"""SPEC.md, the JSON Schema, the pydantic models and the error-code table agree."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from blueprint_format import ERROR_CODES, SPEC_VERSION, models
from blueprint_format.schema import load_schema, schema_path

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "spec" / "v1" / "SPEC.md"


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_error_table_in_spec_is_generated_from_the_code_table() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "spec" / "tools" / "render_error_table.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_code_in_the_spec_table_exists() -> None:
    text = SPEC.read_text(encoding="utf-8")
    block = text.split("<!-- error-codes:begin -->")[1].split("<!-- error-codes:end -->")[0]
    assert re.findall(r"^\| `([a-z0-9-]+)` \|", block, re.M) == list(ERROR_CODES)


def test_schema_error_codes_are_registered() -> None:
    declared = set()
    for node in _walk(load_schema()):
        code = node.get("x-error-code")
        if isinstance(code, str):
            declared.add(code)
        elif isinstance(code, dict):
            declared |= set(code.values())
    assert declared and declared <= set(ERROR_CODES)


def test_codes_used_in_code_are_registered() -> None:
    used: set[str] = set()
    # make_error/Issue everywhere, plus the producers' helpers (which fall back to an older code
    # only while a preferred one is unregistered: every preferred code must be registered now).
    pattern = re.compile(
        r"""(?:make_error|Issue|\.add|input_error|compute_error|apply_error|_code|issue)\(\s*["']([a-z0-9-]+)["']"""
    )
    for package in ("blueprint_format", "converters", "reference_impl"):
        for path in (ROOT / package).rglob("*.py"):
            used |= set(pattern.findall(path.read_text(encoding="utf-8")))
    assert used, "no codes found: the pattern is stale"
    assert used - set(ERROR_CODES) == set()


def _schema_properties() -> dict[str, set[str]]:
    schema = load_schema()
    out = {"#": set(schema["properties"])}
    for name, definition in schema["$defs"].items():
        if "properties" in definition:
            out[name] = set(definition["properties"])
    return out


MODEL_FOR_DEF = {
    "#": models.Blueprint,
    "model": models.Model,
    "provenance": models.Provenance,
    "method": models.Method,
    "mass_shares": models.MassShares,
    "heavy_tail": models.HeavyTail,
    "stability": models.Stability,
    "stability_selection": models.StabilitySelection,
    "interval": models.Interval,
    "domain": models.Domain,
    "module_stats": models.ModuleStats,
    "module": models.Module,
    "cost_model": models.CostModel,
    "allocation": models.Allocation,
    "data_selection": models.DataSelection,
    "sidecar": models.Sidecar,
}


@pytest.mark.parametrize("definition", sorted(MODEL_FOR_DEF))
def test_model_fields_match_schema_members(definition: str) -> None:
    model: type[BaseModel] = MODEL_FOR_DEF[definition]
    fields = {f.alias or name for name, f in model.model_fields.items()}
    schema_members = _schema_properties()[definition]
    assert fields == schema_members
    required = load_schema() if definition == "#" else load_schema()["$defs"][definition]
    model_required = {f.alias or name for name, f in model.model_fields.items() if f.is_required()}
    assert model_required == set(required.get("required", []))


def test_every_schema_member_is_described_in_spec() -> None:
    text = SPEC.read_text(encoding="utf-8")
    members = set().union(*_schema_properties().values())
    undocumented = sorted(m for m in members if f"`{m}`" not in text)
    assert undocumented == []


def test_version_strings_agree() -> None:
    schema = load_schema()
    major = SPEC_VERSION.split(".")[0]
    assert f"/v{major}/" in schema["$id"]
    assert re.search(r'"\^1\\\\\.', schema_path().read_text())  # the schema's spec_version pattern is major 1
    assert SPEC_VERSION in (ROOT / "spec" / "CHANGELOG.md").read_text(encoding="utf-8")
    assert SPEC_VERSION in SPEC.read_text(encoding="utf-8")


def test_limits_in_spec_match_code() -> None:
    from blueprint_format import limits

    text = SPEC.read_text(encoding="utf-8").replace(",", "").replace("\u202f", "").replace(" ", "")
    assert "64MiB" in text and str(limits.MAX_DEPTH) in text and str(limits.MAX_MODULES) in text


@pytest.mark.slow
def test_wheel_ships_the_spec_schema_unchanged(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("gradient_blueprints-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = zf.read("blueprint_format/_spec/v1/blueprint.schema.json")
        names = zf.namelist()
    assert shipped == (ROOT / "spec" / "v1" / "blueprint.schema.json").read_bytes()
    assert any(n.startswith("converters/") for n in names) and any(
        n.startswith("reference_impl/") for n in names
    )
