"""Fuzzing the safetensors header reader against the safetensors library itself: for raw bytes and
for near-valid headers (odd types in shapes and offsets, repeated names, extra members, numbers at
the edges of u64 and of a double, nesting, surrogates), the reader accepts exactly the files the
library accepts, sees the same tensors and metadata, and refuses the rest with a code."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.profile import fuzz_settings
from tests.security.test_containers import library_verdict, our_verdict

DTYPES = ["F32", "F16", "BF16", "I64", "BOOL", "U8", "F4", "F6_E3M2", "C64", "F8_E4M3FNUZ", "f32", "X"]
NUMBERS = st.sampled_from(
    ["0", "1", "-0", "4", "8", "2.0", "1e0", "true", "null", '"4"', "-1", "18446744073709551615",
     "18446744073709551616", "4294967296", "9" * 300, "9" * 400]
)
EXTRA = st.sampled_from(["1", "NaN", "1e400", '"\\ud800"', '"\\ud83d\\ude00"', "[" * 130 + "]" * 130,
                         "[" * 120 + "]" * 120, '{"a":1,"a":2}', "-0", "9" * 5000])


@st.composite
def headers(draw: st.DrawFn) -> tuple[str, bytes]:
    """A header of a few tensors laid out mostly correctly, then bent in one or two places."""
    entries: list[str] = []
    offset = 0
    for i in range(draw(st.integers(0, 3))):
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        count = 1
        for d in shape:
            count *= d
        bits = {"F32": 32, "F16": 16, "BF16": 16, "I64": 64, "C64": 64, "F4": 4, "F6_E3M2": 6}.get(dtype, 8)
        size = (count * bits + 7) // 8
        fields = {
            "dtype": json.dumps(dtype),
            "shape": json.dumps(shape),
            "data_offsets": json.dumps([offset, offset + size]),
        }
        offset += size
        if draw(st.booleans()):  # bend one field
            key = draw(st.sampled_from(sorted(fields)))
            fields[key] = draw(st.sampled_from([f"[{draw(NUMBERS)}]", f"[{draw(NUMBERS)},{draw(NUMBERS)}]", draw(NUMBERS)]))
        body = [f'"{k}":{v}' for k, v in fields.items()]
        if draw(st.integers(0, 4)) == 0:
            body.append(f'"x":{draw(EXTRA)}')
        if draw(st.integers(0, 6)) == 0:
            body.append(body[0])  # a repeated field
        name = draw(st.sampled_from([f"t{i}", "t0", "", "__metadata__", "a.b"]))
        entries.append(f'"{name}":{{{",".join(body)}}}')
    if draw(st.booleans()):
        meta = draw(st.sampled_from(['{"a":"b"}', "null", '{"a":1}', '{"a":"\\ud800"}', "[]", '{"a":"b","a":"c"}']))
        entries.insert(draw(st.integers(0, len(entries))), f'"__metadata__":{meta}')
    text = draw(st.sampled_from(["", " ", "\n"])) + "{" + ",".join(entries) + "}" + draw(st.sampled_from(["", "  ", "\0"]))
    slack = draw(st.sampled_from([0, 0, 0, 1]))
    return text, b"\0" * (offset + slack)


def _judge(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.safetensors"
        path.write_bytes(raw)
        expected = library_verdict(path)
        got = our_verdict(path)
        assert got[0] == expected[0], (raw[:300], got, expected)
        if expected[0]:
            assert got == expected


@fuzz_settings(600)
@given(headers())
def test_near_valid_headers_match_the_library(header: tuple[str, bytes]) -> None:
    text, buffer = header
    raw = text.encode("utf-8", "surrogatepass")
    _judge(struct.pack("<Q", len(raw)) + raw + buffer)


@fuzz_settings(400)
@given(st.binary(max_size=120), st.integers(-4, 4), st.booleans())
def test_raw_bytes_match_the_library(data: bytes, lie: int, brace: bool) -> None:
    body = (b"{" + data) if brace else data
    _judge(struct.pack("<Q", max(len(body) + lie, 0)) + body)


def _unused(_: Any) -> None:  # keeps the imported helpers' module from being collected twice
    return None
