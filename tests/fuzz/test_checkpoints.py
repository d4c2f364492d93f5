"""Fuzzing the PyTorch and ONNX readers: raw bytes, zip-framed bytes, and real checkpoints and models
whose blueprint slot holds arbitrary values (huge integers, NaN, lone surrogates, wrong types,
invalid documents). Only coded errors come out; nothing is ever unpickled beyond tensors and plain
containers."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blueprint_format import BlueprintError, dumps
from converters import make_converter
from tests.converters.converter_blueprints import build_blueprint
from tests.fuzz.profile import fuzz_settings

VALID_TEXT = dumps(build_blueprint([("w", 4)])).decode()

ODD_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.sampled_from([10**400, -(10**4000), 2**63, math.nan, math.inf, "\ud800", "", VALID_TEXT])
    | st.integers()
    | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def _read(kind: str, name: str, write: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        write(path)
        try:
            make_converter(kind).read(path)
        except BlueprintError as exc:
            assert exc.code and "\n" not in str(exc)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@fuzz_settings(150)
@given(st.binary(max_size=200), st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"\x08\x07"]))
def test_raw_bytes(data: bytes, prefix: bytes) -> None:
    _read("torch", "m.pt", lambda p: p.write_bytes(prefix + data))
    _read("onnx", "m.onnx", lambda p: p.write_bytes(prefix + data))


@fuzz_settings(120)
@given(ODD_VALUES)
def test_checkpoint_blueprint_slots(value: Any) -> None:
    import torch

    def write(path: Path) -> None:
        torch.save({"w": torch.zeros(4), "__gradient_blueprint__": value}, str(path))

    _read("torch", "m.pt", write)


@fuzz_settings(120)
@given(st.text(max_size=60) | st.sampled_from([VALID_TEXT, "\ufeff" + VALID_TEXT, VALID_TEXT[:-1]]), st.text(max_size=8))
def test_onnx_metadata_values(text: str, version: str) -> None:
    import onnx

    from tests.converters.helpers import small_onnx_model

    def write(path: Path) -> None:
        model = small_onnx_model()
        model.metadata_props.add(key="gradient_blueprint", value=text)
        model.metadata_props.add(key="gradient_blueprint.spec_version", value=version)
        onnx.save(model, str(path))

    _read("onnx", "m.onnx", write)
