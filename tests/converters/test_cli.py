"""`blueprint embed | extract | strip | pull` through the real CLI entry point."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blueprint_format import BlueprintError, dump, dumps, read_safetensors_header
from blueprint_format.cli import main
from converters import extract
from converters.cli import _byte_count
from tests.converters.converter_blueprints import blueprint_for_tensors, build_blueprint
from tests.converters.helpers import write_safetensors

ROOT = Path(__file__).resolve().parents[2]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_safetensors(tmp_path / "model.safetensors", {"format": "pt"})


@pytest.fixture
def bp_file(tmp_path: Path, model: Path) -> Path:
    path = tmp_path / "bp.json"
    dump(blueprint_for_tensors(read_safetensors_header(model).tensors), path, indent=2)
    return path


def test_embed_extract_strip(
    capsys: pytest.CaptureFixture[str], model: Path, bp_file: Path, tmp_path: Path
) -> None:
    code, out, _ = cli(capsys, "embed", str(bp_file), str(model))
    assert code == 0 and "embedded sha256:" in out
    code, out, _ = cli(capsys, "extract", str(model))
    assert code == 0 and out.encode() == dumps(extract(model)) + b"\n"
    code, _, _ = cli(capsys, "extract", str(model), "-o", str(tmp_path / "x.json"))
    assert code == 0 and (tmp_path / "x.json").read_bytes() == out.encode()[:-1]
    code, out, _ = cli(capsys, "extract", str(model), "--json")
    assert code == 0 and json.loads(out)["container"] == "safetensors"
    code, out, _ = cli(capsys, "strip", str(model), "--json")
    assert code == 0 and json.loads(out)["changed"] is True
    code, _, err = cli(capsys, "extract", str(model))
    assert code == 1 and "no-blueprint" in err
    code, _, err = cli(capsys, "strip", str(model))
    assert code == 0 and "nothing removed" in err


def test_embed_to_output_keeps_target(
    capsys: pytest.CaptureFixture[str], model: Path, bp_file: Path, tmp_path: Path
) -> None:
    original = model.read_bytes()
    out_path = tmp_path / "out.safetensors"
    code, out, _ = cli(
        capsys, "embed", str(bp_file), str(model), "-o", str(out_path), "--reserve", "4K", "--json"
    )
    assert code == 0 and json.loads(out)["path"] == str(out_path)
    assert model.read_bytes() == original and extract(out_path) is not None
    # The reserved padding lets the next embed be an in-place one, when asked for.
    code, out, _ = cli(capsys, "embed", str(bp_file), str(out_path), "--in-place", "--json")
    assert code == 0 and json.loads(out)["in_place"] is True


def test_invalid_blueprint_is_never_embedded(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    doc = json.loads(dumps(build_blueprint([("m", 1)])))
    doc["modules"][0]["k_star"] = 1.5
    bad.write_text(json.dumps(doc))
    original = model.read_bytes()
    code, _, err = cli(capsys, "embed", str(bad), str(model))
    assert code == 1 and "k-star-out-of-range" in err and "/modules/0/k_star" in err
    assert model.read_bytes() == original


def test_binding_mismatch_refused_then_forced(
    capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.json"
    dump(build_blueprint([("not.in.model", 1)]), other)
    original = model.read_bytes()
    code, _, err = cli(capsys, "embed", str(other), str(model))
    assert code == 1 and "structure-digest-mismatch" in err and "module-not-in-model" in err
    assert model.read_bytes() == original
    code, _, err = cli(capsys, "embed", str(other), str(model), "--force")
    assert code == 0 and err.startswith("warning:") and "structure-digest-mismatch" in err


def test_torch_checkpoint_binding_via_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ckpt = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(2, 2), "b": torch.zeros(2)}, ckpt)
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    from converters.torch_checkpoint import TorchCheckpointConverter

    tensors = TorchCheckpointConverter().tensors(ckpt)
    assert tensors is not None
    dump(blueprint_for_tensors(tensors), good)
    dump(build_blueprint([("x", 1)]), bad)
    assert cli(capsys, "embed", str(bad), str(ckpt))[0] == 1
    assert cli(capsys, "embed", str(good), str(ckpt))[0] == 0
    assert cli(capsys, "extract", str(ckpt))[0] == 0


@pytest.mark.parametrize(
    "argv,code,needle",
    [
        (["extract", "{missing}"], 2, "io-error"),
        (["embed", "{bp}", "{missing}"], 2, "io-error"),
        (["embed", "{missing}", "{model}"], 2, "io-error"),
        (["extract", "{text}"], 1, "unsupported-container"),
        (["extract", "{truncated}"], 1, "bad-container"),
        (["extract", "{huge}"], 1, "header-too-large"),
        (["strip", "{truncated}"], 1, "bad-container"),
    ],
)
def test_errors_have_codes_and_exit_status(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    model: Path,
    bp_file: Path,
    argv: list[str],
    code: int,
    needle: str,
) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "trunc.safetensors").write_bytes(model.read_bytes()[:-5])
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 10**9))
    names = {
        "missing": str(tmp_path / "missing.safetensors"),
        "bp": str(bp_file),
        "model": str(model),
        "text": str(tmp_path / "notes.txt"),
        "truncated": str(tmp_path / "trunc.safetensors"),
        "huge": str(tmp_path / "huge.safetensors"),
    }
    status, _, err = cli(capsys, *[a.format(**names) for a in argv])
    assert status == code and needle in err and "Traceback" not in err


def test_read_only_target_is_exit_2(
    capsys: pytest.CaptureFixture[str], model: Path, bp_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(*a: object, **kw: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", denied)
    original = model.read_bytes()
    code, _, err = cli(capsys, "embed", str(bp_file), str(model))
    assert code == 2 and "write-failed" in err and "Permission denied" in err
    assert model.read_bytes() == original


def test_pull_local_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model: Path, bp_file: Path
) -> None:
    assert cli(capsys, "embed", str(bp_file), str(tmp_path))[0] == 0  # the folder holding the model
    code, out, _ = cli(capsys, "pull", str(tmp_path))
    assert code == 0 and out.encode() == dumps(extract(tmp_path)) + b"\n"


def test_byte_counts() -> None:
    assert [_byte_count(x) for x in ("0", "4096", "4K", "4KiB", "1M", "2MB")] == [
        0,
        4096,
        4096,
        4096,
        2**20,
        2 * 2**20,
    ]
    import argparse

    for bad in ("-1", "x", "1G"):
        with pytest.raises(argparse.ArgumentTypeError):
            _byte_count(bad)


@pytest.mark.slow
def test_subprocess_never_prints_a_traceback(tmp_path: Path, model: Path, bp_file: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage\xff")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    for argv, status in (
        (["extract", str(tmp_path / "bad.onnx")], 1),
        (["embed", str(bp_file), str(model)], 0),
        (["extract", str(model)], 0),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "blueprint_format", *argv],
            capture_output=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert proc.returncode == status, proc.stderr
        assert b"Traceback" not in proc.stderr


def test_handlers_raise_blueprint_errors_only(model: Path, tmp_path: Path) -> None:
    import argparse

    from converters.cli import cmd_extract

    with pytest.raises(BlueprintError):
        cmd_extract(argparse.Namespace(target=str(model), output=None, json=False))
