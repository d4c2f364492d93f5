"""PyTorch checkpoints: a top-level key of plain JSON values, read only with weights_only=True."""

from __future__ import annotations

import collections
import os
import pickle
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import converters.torch_checkpoint as tc
from blueprint_format import BlueprintIOError, ContainerError, dumps
from converters import CHECKPOINT_KEY, kind_of
from converters.torch_checkpoint import TorchCheckpointConverter
from tests.converters.converter_blueprints import blueprint_for_tensors, blueprints, build_blueprint
from tests.converters.helpers import leftovers

CONV = TorchCheckpointConverter()


class Custom:
    """A class the restricted unpickler does not allow."""

    def __init__(self) -> None:
        self.value = 1


def state_dict(seed: int = 0) -> collections.OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return collections.OrderedDict(
        [
            ("layer.0.weight", torch.randn(4, 3, generator=g)),
            ("layer.0.bias", torch.randn(4, generator=g)),
            ("layer.1.weight", torch.randn(2, 4, generator=g).to(torch.bfloat16)),
            ("step", torch.tensor(7)),
        ]
    )


def assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    else:
        assert a == b


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    torch.save(state_dict(), path)
    return path


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bp=blueprints(),
    previous=st.none() | blueprints(max_modules=2),
    nested=st.booleans(),
    legacy=st.booleans(),
)
def test_round_trip_any_blueprint(bp, previous, nested, legacy) -> None:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.pt"
        obj = {"state_dict": state_dict(), "epoch": 3, "note": "keep ✓"} if nested else state_dict()
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        if previous is not None:
            CONV.write(path, previous)
        CONV.write(path, bp)
        assert dumps(CONV.read(path)) == dumps(bp)
        loaded = torch.load(path, weights_only=True)
        assert loaded[CHECKPOINT_KEY] == bp.to_json()
        assert_same({k: v for k, v in loaded.items() if k != CHECKPOINT_KEY}, obj)
        CONV.remove(path)
        assert CONV.read(path) is None
        assert_same(torch.load(path, weights_only=True), obj)
        assert leftovers(Path(tmp)) == []


def test_tensors_give_binding(ckpt: Path) -> None:
    tensors = CONV.tensors(ckpt)
    assert tensors is not None
    assert [(t.name, t.dtype, t.shape) for t in tensors][:3] == [
        ("layer.0.weight", "F32", (4, 3)),
        ("layer.0.bias", "F32", (4,)),
        ("layer.1.weight", "BF16", (2, 4)),
    ]
    bp = blueprint_for_tensors(tensors)
    CONV.write(ckpt, bp)
    assert CONV.tensors(ckpt) == tensors  # the blueprint key is not a tensor


def test_pickle_only_checkpoint_is_refused_without_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "custom.pt"
    torch.save({"weights": torch.ones(2), "extra": Custom()}, path)
    ran: list[str] = []
    monkeypatch.setattr(Custom, "__setstate__", lambda self, state: ran.append("unpickled"), raising=False)
    original = path.read_bytes()
    for op in (
        lambda: CONV.read(path),
        lambda: CONV.write(path, build_blueprint([("m", 1)])),
        lambda: CONV.tensors(path),
    ):
        with pytest.raises(ContainerError) as info:
            op()
        assert info.value.code == "unsafe-checkpoint"
        assert "Custom" in str(info.value)
    assert ran == [] and path.read_bytes() == original


def test_raw_pickle_with_reduce_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.bin"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("echo pwned > /dev/null",))

    path.write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(ContainerError) as info:
        CONV.read(path)
    assert info.value.code == "unsafe-checkpoint"


@pytest.mark.parametrize(
    "data", [b"", b"hello world", b"PK\x03\x04garbage"], ids=["empty", "text", "bad-zip"]
)
def test_not_a_checkpoint(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(data)
    with pytest.raises(ContainerError) as info:
        CONV.read(path)
    assert info.value.code == "bad-container"


def test_non_dict_checkpoint_cannot_hold_a_blueprint(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.ones(1)], path)
    for op in (lambda: CONV.read(path), lambda: CONV.write(path, build_blueprint([("m", 1)]))):
        with pytest.raises(ContainerError) as info:
            op()
        assert info.value.code == "unsupported-container"


@pytest.mark.parametrize(
    "value",
    [(1, 2), {1: "int key"}, {"a": [torch.ones(1)]}, {"a": {"b": b"bytes"}}],
    ids=["tuple", "int-key", "nested-tensor", "bytes"],
)
def test_key_with_non_plain_values_is_bad(tmp_path: Path, value: object) -> None:
    path = tmp_path / "odd.pt"
    torch.save({CHECKPOINT_KEY: value}, path)
    with pytest.raises(ContainerError) as info:
        CONV.read(path)
    assert info.value.code == "bad-container"


def test_key_with_non_json_value_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "odd.pt"
    torch.save({CHECKPOINT_KEY: {"spec_version": torch.ones(1)}}, path)
    with pytest.raises(ContainerError) as info:
        CONV.read(path)
    assert info.value.code == "bad-container"


@pytest.mark.parametrize("step", ["mid-save", "disk-full", "before-rename"])
def test_fault_leaves_original(ckpt: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    original = ckpt.read_bytes()
    if step == "mid-save":

        def boom(*a: object, **kw: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(torch, "save", boom)
    elif step == "disk-full":
        real_write = tc._RecordingWriter.write
        calls = {"n": 0}

        def full(self: tc._RecordingWriter, data: bytes) -> int:
            calls["n"] += 1
            if calls["n"] == 3:  # after torch has written a few records
                self.error = OSError(28, "No space left on device")
                raise self.error
            return real_write(self, data)

        monkeypatch.setattr(tc._RecordingWriter, "write", full)
    else:

        def boom(*a: object, **kw: object) -> None:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(BlueprintIOError) as info:
        CONV.write(ckpt, build_blueprint([("m", 1)]))
    assert info.value.code == "write-failed"
    assert ("Permission denied" if step == "before-rename" else "No space left") in str(info.value)
    assert ckpt.read_bytes() == original and leftovers(ckpt.parent) == []


def test_sniffed_by_content(ckpt: Path) -> None:
    other = ckpt.with_suffix(".weights")
    ckpt.rename(other)
    assert kind_of(other) == "torch"
