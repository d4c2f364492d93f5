"""ONNX: blueprint in metadata_props; external data untouched; checker and onnxruntime still happy."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blueprint_format import BlueprintIOError, ContainerError, dumps
from converters import METADATA_KEY, SPEC_VERSION_KEY, kind_of
from converters.onnx_metadata import OnnxConverter
from tests.converters.converter_blueprints import blueprints, build_blueprint
from tests.converters.helpers import leftovers, small_onnx_model

CONV = OnnxConverter()
X = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)


def run(path: Path, feeds: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds if feeds is not None else {"X": X}))


def props(path: Path) -> list[tuple[str, str]]:
    model = onnx.load(str(path), load_external_data=False)
    return [(p.key, p.value) for p in model.metadata_props]


def without_ours(path: Path) -> bytes:
    """The serialized model with our metadata entries removed (for comparing everything else)."""
    model = onnx.load(str(path), load_external_data=False)
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(METADATA_KEY)]
    del model.metadata_props[:]
    for k, v in kept:
        model.metadata_props.add(key=k, value=v)
    return model.SerializeToString()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.onnx"
    onnx.save(small_onnx_model(), str(path))
    return path


@pytest.fixture
def onnx_external(tmp_path: Path) -> Path:
    path = tmp_path / "ext" / "small.onnx"
    path.parent.mkdir()
    onnx.save_model(
        small_onnx_model(),
        str(path),
        save_as_external_data=True,
        location="small.onnx.data",
        size_threshold=0,
    )
    return path


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bp=blueprints(), previous=st.none() | blueprints(max_modules=2), external=st.booleans())
def test_round_trip_any_blueprint(bp, previous, external) -> None:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        if external:
            onnx.save_model(
                small_onnx_model(),
                str(path),
                save_as_external_data=True,
                location="m.onnx.data",
                size_threshold=0,
            )
        else:
            onnx.save(small_onnx_model(), str(path))
        if previous is not None:
            CONV.write(path, previous)
        before = without_ours(path)
        data_before = sha(Path(tmp) / "m.onnx.data") if external else None
        CONV.write(path, bp)
        assert dumps(CONV.read(path)) == dumps(bp)
        assert dict(props(path))[SPEC_VERSION_KEY] == bp.spec_version
        assert without_ours(path) == before  # every other byte of the proto is the same
        if external:
            assert sha(Path(tmp) / "m.onnx.data") == data_before
        onnx.checker.check_model(str(path))
        CONV.remove(path)
        assert CONV.read(path) is None and without_ours(path) == before
        assert leftovers(Path(tmp)) == []


def test_embed_keeps_other_props_and_outputs(onnx_file: Path) -> None:
    expected = run(onnx_file)
    bp = build_blueprint([("W", 12)])
    CONV.write(onnx_file, bp)
    assert props(onnx_file)[:2] == [("author", "tests"), ("note", "keep me ✓")]
    assert [k for k, _ in props(onnx_file)[2:]] == [METADATA_KEY, SPEC_VERSION_KEY]
    onnx.checker.check_model(str(onnx_file), full_check=True)
    for a, b in zip(run(onnx_file), expected, strict=True):
        np.testing.assert_array_equal(a, b)
    # Re-embedding replaces in place rather than appending a second copy.
    CONV.write(onnx_file, build_blueprint([("W", 12)], description="v2"))
    assert [k for k, _ in props(onnx_file)].count(METADATA_KEY) == 1


def test_external_data_untouched_and_resolves(onnx_external: Path) -> None:
    data = onnx_external.parent / "small.onnx.data"
    data_sha, expected = sha(data), run(onnx_external)
    CONV.write(onnx_external, build_blueprint([("W", 12)]))
    assert sha(data) == data_sha
    onnx.checker.check_model(str(onnx_external))  # path form: resolves external data
    loaded = onnx.load(str(onnx_external))  # loads the weights from the data file
    assert loaded.graph.initializer[0].raw_data
    for a, b in zip(run(onnx_external), expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_write_elsewhere_refuses_when_external_data_would_dangle(onnx_external: Path, tmp_path: Path) -> None:
    with pytest.raises(ContainerError) as info:
        CONV.write(onnx_external, build_blueprint([("W", 12)]), out=tmp_path / "other.onnx")
    assert info.value.code == "write-failed" and "external data" in str(info.value)
    assert not (tmp_path / "other.onnx").exists()


def test_write_to_out_in_same_folder(onnx_external: Path) -> None:
    out = onnx_external.parent / "copy.onnx"
    original = onnx_external.read_bytes()
    CONV.write(onnx_external, build_blueprint([("W", 12)]), out=out)
    assert onnx_external.read_bytes() == original
    assert CONV.read(out) is not None
    onnx.checker.check_model(str(out))


def test_sniffed_without_suffix(onnx_file: Path) -> None:
    renamed = onnx_file.with_suffix(".model")
    onnx_file.rename(renamed)
    assert kind_of(renamed) == "onnx"


@pytest.mark.parametrize(
    "data",
    [b"", b"not a protobuf at all \xff\xfe", b"\x08\x07", b"\x0a\xff\xff\xff\xff\x0f"],
    ids=["empty", "text", "no-graph", "truncated"],
)
def test_not_an_onnx_model(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "bad.onnx"
    p.write_bytes(data)
    for op in (lambda: CONV.read(p), lambda: CONV.write(p, build_blueprint([("m", 1)]))):
        with pytest.raises(ContainerError) as info:
            op()
        assert info.value.code == "bad-container"
    assert p.read_bytes() == data


def test_fault_before_rename_leaves_original(onnx_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = onnx_file.read_bytes()

    def boom(*a: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(BlueprintIOError) as info:
        CONV.write(onnx_file, build_blueprint([("m", 1)]))
    assert info.value.code == "write-failed"
    assert onnx_file.read_bytes() == original and leftovers(onnx_file.parent) == []


@pytest.mark.slow
@pytest.mark.parametrize("external", [False, True], ids=["single-file", "external-data"])
def test_real_minilm_onnx(minilm_onnx: tuple[Path, dict], tmp_path: Path, external: bool) -> None:
    source, feeds = minilm_onnx
    path = tmp_path / "minilm.onnx"
    if external:
        onnx.save_model(
            onnx.load(str(source)), str(path), save_as_external_data=True, location="minilm.onnx.data"
        )
    else:
        path.write_bytes(source.read_bytes())
    expected = run(path, feeds)
    data_sha = sha(tmp_path / "minilm.onnx.data") if external else None
    bp = build_blueprint([("encoder.layer.0", 10), ("encoder.layer.1", 10)])
    CONV.write(path, bp)
    assert CONV.read(path) == bp
    onnx.checker.check_model(str(path))
    if external:
        assert sha(tmp_path / "minilm.onnx.data") == data_sha
    for a, b in zip(run(path, feeds), expected, strict=True):
        np.testing.assert_array_equal(a, b)
