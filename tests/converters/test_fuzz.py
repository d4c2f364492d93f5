"""Malformed containers of every shape give a coded BlueprintError or None, never another exception."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blueprint_format import BlueprintError
from converters import make_converter
from converters.model_card import BEGIN, END

_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _read(kind: str, name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            make_converter(kind).read(path)
        except BlueprintError as exc:
            assert exc.code and str(exc)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(
    header=st.one_of(
        _JSONISH.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(
            st.text(max_size=6),
            st.fixed_dictionaries(
                {
                    "dtype": st.sampled_from(["F32", "F16", "I64", "X"]),
                    "shape": st.lists(st.integers(-1, 4), max_size=3),
                    "data_offsets": st.lists(st.integers(-2, 40), max_size=3),
                }
            )
            | _JSONISH,
            max_size=3,
        ).map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
    ),
    tail=st.binary(max_size=64),
    lie=st.integers(-3, 3),
)
def test_safetensors_headers(header: bytes, tail: bytes, lie: int) -> None:
    n = max(len(header) + lie, 0)
    _read("safetensors", "f.safetensors", struct.pack("<Q", n) + header + tail)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(
    front=st.none() | st.text(max_size=80),
    body=st.lists(
        st.sampled_from([BEGIN, END, "```json", "```", "{}", "text", "---", ""]) | st.text(max_size=20),
        max_size=8,
    ),
    nl=st.sampled_from(["\n", "\r\n"]),
)
def test_model_cards(front: str | None, body: list[str], nl: str) -> None:
    text = ("---" + nl + front + nl + "---" + nl if front is not None else "") + nl.join(body)
    _read("model-card", "README.md", text.encode("utf-8", "surrogatepass"))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200))
def test_onnx_and_torch_bytes(data: bytes) -> None:
    _read("onnx", "m.onnx", data)
    _read("torch", "m.pt", data)
    _read("torch", "z.pt", b"PK\x03\x04" + data)
