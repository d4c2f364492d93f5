"""safetensors headers, read the way the safetensors library reads them (SPEC.md 16.1).

A file is an 8-byte little-endian length N, N bytes of UTF-8 JSON header, then the tensor buffer.
This reader accepts exactly the headers that the reference library (`safe_open`) accepts, and
refuses the rest with `bad-container` (or `header-too-large`); tests compare the two verdicts on
the same bytes. What that means, beyond plain JSON (the library parses with serde_json into typed
structs):

* no NaN/Infinity literals, no number that overflows a double, no lone UTF-16 surrogate, nesting
  at most 127 objects/arrays deep (serde_json's recursion limit);
* `shape` entries and `data_offsets` are unsigned 64-bit integers: not booleans, not floats (`1.0`,
  `1e0` and even `-0` are floats to serde_json), not above 2**64 - 1; `data_offsets` has exactly
  two; `dtype` is one of the library's names;
* a member named `__metadata__` twice, or `dtype`/`shape`/`data_offsets` twice in one tensor, is
  refused; other repeated names are not (the last one wins, as in the library); unknown members of
  a tensor entry are ignored; `__metadata__` may be `null`, else maps strings to strings;
* leading and trailing JSON whitespace around the object is allowed;
* the element count is the product of the shape computed with overflow checks (as `usize`), a
  sub-byte dtype's total size must be a whole number of bytes, and sorted by (begin, end) the
  tensors must cover the buffer exactly, without gaps or overlaps.

Only the length and the header are ever read; the header length is checked against the 100 MB cap
and the file size before a byte of it is read, and its JSON values are counted before parsing.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blueprint_format.errors import BlueprintError, BlueprintIOError, ContainerError, make_error
from blueprint_format.jsonio import check_counts, paused_gc
from blueprint_format.paths import open_regular_input

#: The reference safetensors reader refuses headers above 100 MB; so do we, before reading them.
SAFETENSORS_HEADER_CAP = 100_000_000
#: dtype codes a safetensors header may use, with their size in bits.
SAFETENSORS_DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
#: Largest value of a Rust `usize` on the 64-bit platforms the library runs on.
USIZE_MAX = 2**64 - 1
#: serde_json refuses nesting at this depth (objects and arrays, the header object included).
MAX_HEADER_DEPTH = 127
#: Members of a tensor entry that the library's struct knows (a repeated one is an error there).
TENSOR_FIELDS = ("dtype", "shape", "data_offsets")
#: JSON whitespace (RFC 8259), the only characters serde_json skips around the header object.
_JSON_SPACE = b" \t\n\r"


@dataclass(frozen=True)
class TensorInfo:
    """Name, safetensors dtype code and shape of one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed safetensors header. `data_start` is where the tensor buffer begins (8 + N)."""

    header_size: int
    header: dict[str, Any]
    metadata: dict[str, str]
    tensors: list[TensorInfo]
    file_size: int

    @property
    def data_start(self) -> int:
        return 8 + self.header_size


def _bad(path: Path | str, message: str, offset: int | None = None) -> ContainerError:
    where = f" (byte offset {offset})" if offset is not None else ""
    return ContainerError(make_error("bad-container", f"{path}: {message}{where}"))


def looks_like_safetensors(head: bytes) -> bool:
    """Whether a file's first bytes could start a safetensors file: a length of at least 2, then
    the header's first non-space byte `{` (the library allows leading JSON whitespace)."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    rest = head[8:].lstrip(_JSON_SPACE)
    return n >= 2 and (rest[:1] == b"{" or (not rest and len(head) < 8 + n))


def read_safetensors_header(path: str | Path, *, check_offsets: bool = True) -> SafetensorsHeader:
    """Read only the 8-byte length and the JSON header of a safetensors file (a regular file:
    never a FIFO or device), and check it as the safetensors library does.

    Bounded: the header length is checked against the file size and the 100 MB cap before any
    header byte is read. Tensor bytes are never read.
    """
    p = Path(path)
    with open_regular_input(p) as fh:
        try:
            file_size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                raise _bad(p, f"file is {len(head)} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > SAFETENSORS_HEADER_CAP:
                raise ContainerError(
                    make_error(
                        "header-too-large",
                        f"{p}: header length {n} exceeds the {SAFETENSORS_HEADER_CAP}-byte cap",
                    )
                )
            if 8 + n > file_size:
                raise _bad(p, f"header length {n} runs past the end of the {file_size}-byte file", 0)
            raw = fh.read(n)
        except OSError as exc:
            raise BlueprintIOError(make_error("io-error", f"cannot read {p}: {exc.strerror or exc}")) from None
    if len(raw) != n:
        raise _bad(p, "the file ended while its header was read (truncated meanwhile)", 8)
    header = parse_header(raw, p)
    metadata, tensors, spans = _entries(header, p)
    if check_offsets:
        _check_spans(p, spans, file_size - 8 - n)
    return SafetensorsHeader(
        header_size=n, header=header, metadata=metadata, tensors=tensors, file_size=file_size
    )


class _Repeated(dict[str, Any]):
    """A parsed object in which some member names occurred more than once: the last value is
    kept (as in the library's maps), the earlier ones are in `dropped`, since the library still
    checks each of them against its type before the next one replaces it."""

    repeated: set[str]
    dropped: list[tuple[str, Any]]


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    marked = _Repeated(obj)
    marked.repeated = set()
    marked.dropped = []
    last = {k: i for i, (k, _) in enumerate(pairs)}
    for i, (key, value) in enumerate(pairs):
        if last[key] != i:
            marked.repeated.add(key)
            marked.dropped.append((key, value))
    return marked


class _Refused:
    """A number serde_json refuses to parse at all (NaN, Infinity, beyond a double's range)."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


def _integer(literal: str) -> int | float | _Refused:
    # serde_json reads "-0" as a float (so it is no usize), and integers beyond the 64-bit range
    # as doubles: fine in a member it ignores, out of range once they overflow a double.
    if literal == "-0":
        return -0.0
    digits = len(literal.lstrip("-"))
    if digits > 20:
        as_float = float(literal)
        return as_float if as_float not in (float("inf"), float("-inf")) else _Refused(literal)
    return int(literal)


def parse_header(raw: bytes, where: Path | str = "header") -> dict[str, Any]:
    """The header JSON object, refused (bad-container) where the safetensors library refuses it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(where, f"header is not UTF-8: {exc.reason}", 8 + exc.start) from None
    try:
        check_counts(text)
    except BlueprintError as exc:
        raise ContainerError(make_error("header-too-large", f"{where}: {exc.issues[0].message}")) from None
    with paused_gc():
        try:
            header = json.loads(text, object_pairs_hook=_pairs, parse_constant=_Refused, parse_int=_integer)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise _bad(where, f"header is not valid JSON: {exc}", 8) from None
        problem = _value_problem(header)
    if problem is not None:
        raise _bad(where, f"header is not valid JSON: {problem}", 8)
    if not isinstance(header, dict):
        raise _bad(where, "header is not a JSON object", 8)
    if isinstance(header, _Repeated) and "__metadata__" in header.repeated:
        raise _bad(where, "header has the member __metadata__ twice", 8)
    return header


def _walk(root: Any) -> Iterator[tuple[Any, int]]:
    """Every value of a parsed JSON tree with its container depth (iterative, depth-bounded)."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        yield node, depth
        if depth > MAX_HEADER_DEPTH:
            continue
        if isinstance(node, dict):
            stack.extend((key, depth + 1) for key in node)
            stack.extend((child, depth + 1) for child in node.values())
            # values a repeated name replaced were parsed (and judged) by the library all the same
            stack.extend((child, depth + 1) for _, child in _dropped(node))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)


def _value_problem(root: Any) -> str | None:
    """What in the parsed header serde_json would refuse, or None."""
    for node, depth in _walk(root):
        kind = type(node)
        if kind is dict or kind is list or kind is _Repeated:
            if depth > MAX_HEADER_DEPTH:
                return f"nesting deeper than {MAX_HEADER_DEPTH} levels (serde_json's recursion limit)"
        elif kind is float:
            if node - node != 0:
                return f"number {node} out of range"
        elif kind is _Refused:
            return f"number {node.literal[:24]} is not a finite double"
        elif kind is str and not node.isascii() and any(0xD800 <= ord(c) <= 0xDFFF for c in node):
            return f"string {node[:24]!a} holds a lone UTF-16 surrogate"
    return None


def _entries(header: dict[str, Any], p: Path) -> tuple[dict[str, str], list[TensorInfo], list[tuple[int, int, str]]]:
    """The metadata, the tensors and their (begin, end, name) spans, each entry checked."""
    metadata = header.get("__metadata__")
    if metadata is None:
        metadata = {}
    values = list(metadata.values()) + [v for _, v in _dropped(metadata)] if isinstance(metadata, dict) else []
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in values):
        raise _bad(p, "__metadata__ must map strings to strings", 8)
    for name, entry in _dropped(header):  # replaced by a later entry of the same name, still typed
        _tensor_fields(p, name, entry)
    tensors: list[TensorInfo] = []
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name != "__metadata__":
            info, begin, end = _tensor_entry(p, name, entry)
            tensors.append(info)
            spans.append((begin, end, name))
    return dict(metadata), tensors, spans


def _dropped(obj: dict[str, Any]) -> list[tuple[str, Any]]:
    return obj.dropped if isinstance(obj, _Repeated) else []


def _usize(value: Any) -> bool:
    return type(value) is int and 0 <= value <= USIZE_MAX


def _tensor_entry(p: Path, name: str, entry: Any) -> tuple[TensorInfo, int, int]:
    """A tensor entry whose types are right and whose offsets span what its shape and dtype need."""
    dtype, shape, begin, end = _tensor_fields(p, name, entry)
    nbytes = _byte_size(p, name, dtype, shape)
    if end < begin or end - begin != nbytes:
        raise _bad(p, f"tensor {name!a}: data_offsets span {end - begin} bytes, shape and dtype need {nbytes}")
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape)), begin, end


def _tensor_fields(p: Path, name: str, entry: Any) -> tuple[str, list[int], int, int]:
    """The dtype, shape and offsets of a tensor entry, with the types the library's struct has."""
    if not isinstance(entry, dict):
        raise _bad(p, f"tensor {name!a}: entry is not an object")
    if isinstance(entry, _Repeated) and entry.repeated & set(TENSOR_FIELDS):
        raise _bad(p, f"tensor {name!a}: a member repeats ({', '.join(sorted(entry.repeated))})")
    missing = [f for f in TENSOR_FIELDS if f not in entry]
    if missing:
        raise _bad(p, f"tensor {name!a}: missing {', '.join(missing)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPE_BITS:
        raise _bad(p, f"tensor {name!a}: unknown dtype {dtype!a}")
    if not isinstance(shape, list) or not all(_usize(d) for d in shape):
        raise _bad(p, f"tensor {name!a}: shape must be a list of unsigned 64-bit integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_usize(o) for o in offsets):
        raise _bad(p, f"tensor {name!a}: data_offsets must be [begin, end], unsigned 64-bit integers")
    return dtype, shape, offsets[0], offsets[1]


def _byte_size(p: Path, name: str, dtype: str, shape: list[int]) -> int:
    """Bytes of a tensor, computed as the library does: a checked product, whole bytes only."""
    count = 1
    for dim in shape:
        count *= dim
        if count > USIZE_MAX:
            raise _bad(p, f"tensor {name!a}: the element count overflows 64 bits")
    bits = SAFETENSORS_DTYPE_BITS[dtype]
    total_bits = count * bits
    if total_bits > USIZE_MAX:
        raise _bad(p, f"tensor {name!a}: the byte size overflows 64 bits")
    if total_bits % 8:
        raise _bad(p, f"tensor {name!a}: {count} elements of {dtype} are not a whole number of bytes")
    return total_bits // 8


def _check_spans(p: Path, spans: list[tuple[int, int, str]], buffer_size: int) -> None:
    cursor = 0
    for begin, end, name in sorted(spans):
        if begin != cursor:
            problem = "overlaps the previous tensor" if begin < cursor else "leaves a gap before it"
            raise _bad(p, f"tensor {name!a}: data_offsets {problem}")
        cursor = end
    if cursor != buffer_size:
        raise _bad(
            p, f"tensors cover {cursor} bytes but the buffer holds {buffer_size} (truncated or trailing data)"
        )
