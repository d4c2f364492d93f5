"""Model binding: tensor inventories, the structure digest, and header-only safetensors reading.

The structure digest (SPEC.md, "Model binding") identifies a model's tensor layout without its
weights: SHA-256 over one line per tensor, `name TAB dtype TAB comma-separated shape LF`, sorted by
the UTF-8 bytes of the name. It can be recomputed from safetensors headers alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blueprint_format.errors import BlueprintIOError, ContainerError, Issue, make_error
from blueprint_format.models import Blueprint

#: The reference safetensors reader refuses headers above 100 MB; so do we, before reading them.
SAFETENSORS_HEADER_CAP = 100_000_000
#: dtype codes a safetensors header may use, with their size in bytes (bits for sub-byte types).
SAFETENSORS_DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
}


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


def structure_digest(tensors: Iterable[TensorInfo]) -> str:
    """The spec's structure digest of a tensor inventory."""
    lines = sorted(
        (t.name.encode("utf-8"), f"{t.name}\t{t.dtype}\t{','.join(str(d) for d in t.shape)}\n".encode())
        for t in tensors
    )
    h = hashlib.sha256()
    for _, line in lines:
        h.update(line)
    return "sha256:" + h.hexdigest()


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


def _bad(path: Path, message: str, offset: int | None = None) -> ContainerError:
    where = f" (byte offset {offset})" if offset is not None else ""
    return ContainerError(make_error("bad-container", f"{path}: {message}{where}"))


def read_safetensors_header(path: str | Path, *, check_offsets: bool = True) -> SafetensorsHeader:
    """Read only the 8-byte length and the JSON header of a safetensors file.

    Bounded: the header length is checked against the file size and the 100 MB cap before any
    header byte is read. Tensor bytes are never read. Offsets are checked to cover the buffer
    exactly without overlap, as the reference reader does.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
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
    if not raw.startswith(b"{"):
        raise _bad(p, "header does not start with '{'", 8)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _bad(p, f"header is not valid UTF-8 JSON: {exc}", 8) from None
    if not isinstance(header, dict):
        raise _bad(p, "header is not a JSON object", 8)
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _bad(p, "__metadata__ must map strings to strings", 8)
    tensors: list[TensorInfo] = []
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors.append(_tensor_entry(p, name, entry, spans))
    if check_offsets:
        _check_spans(p, spans, file_size - 8 - n)
    return SafetensorsHeader(
        header_size=n, header=header, metadata=dict(metadata), tensors=tensors, file_size=file_size
    )


def _tensor_entry(p: Path, name: str, entry: Any, spans: list[tuple[int, int, str]]) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _bad(p, f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPE_BITS:
        raise _bad(p, f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _bad(p, f"tensor {name!r}: shape must be a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _bad(p, f"tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= end")
    info = TensorInfo(name=name, dtype=dtype, shape=tuple(shape))
    nbits = info.numel * SAFETENSORS_DTYPE_BITS[dtype]
    if offsets[1] - offsets[0] != (nbits + 7) // 8:
        raise _bad(
            p,
            f"tensor {name!r}: data_offsets span {offsets[1] - offsets[0]} bytes, shape needs {(nbits + 7) // 8}",
        )
    spans.append((offsets[0], offsets[1], name))
    return info


def _check_spans(p: Path, spans: list[tuple[int, int, str]], buffer_size: int) -> None:
    cursor = 0
    for begin, end, name in sorted(spans):
        if begin != cursor:
            problem = "overlaps the previous tensor" if begin < cursor else "leaves a gap before it"
            raise _bad(p, f"tensor {name!r}: data_offsets {problem}")
        cursor = end
    if cursor != buffer_size:
        raise _bad(
            p, f"tensors cover {cursor} bytes but the buffer holds {buffer_size} (truncated or trailing data)"
        )


def model_tensors(path: str | Path) -> list[TensorInfo]:
    """Tensor inventory of a .safetensors file or a model folder (sharded or not), from headers only."""
    p = Path(path)
    if p.is_file():
        return read_safetensors_header(p).tensors
    if not p.is_dir():
        raise BlueprintIOError(make_error("io-error", f"{p}: no such file or folder"))
    index = p / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        except (OSError, ValueError, AttributeError) as exc:
            raise _bad(index, f"unreadable shard index: {exc}") from None
        shards = sorted({str(v) for v in weight_map.values()})
        files = [p / s for s in shards]
    else:
        files = sorted(p.glob("*.safetensors"))
    if not files:
        raise ContainerError(make_error("unreadable-model", f"{p}: no .safetensors weights found"))
    tensors: list[TensorInfo] = []
    for f in files:
        if Path(f).parent.resolve() != p.resolve():
            raise ContainerError(
                make_error("unsafe-path", f"{index}: shard {f.name!r} lies outside the folder")
            )
        tensors.extend(read_safetensors_header(f).tensors)
    return tensors


def _module_params(tensors: list[TensorInfo], module: str) -> int | None:
    prefix = module + "."
    found = [t for t in tensors if t.name.startswith(prefix) or t.name == module]
    return sum(t.numel for t in found) if found else None


def check_binding(bp: Blueprint, tensors: list[TensorInfo]) -> list[Issue]:
    """Issues that stop `bp` from describing a model with these tensors (empty: it binds)."""
    issues: list[Issue] = []
    actual = structure_digest(tensors)
    if actual != bp.model.structure_digest:
        issues.append(
            make_error(
                "structure-digest-mismatch",
                f"blueprint is for structure {bp.model.structure_digest[:19]}..., the model has {actual[:19]}...",
                "/model/structure_digest",
            )
        )
    for i, module in enumerate(bp.modules):
        count = _module_params(tensors, module.name)
        if count is None:
            issues.append(
                make_error(
                    "module-not-in-model",
                    f"module {module.name!r} matches no tensor of the model",
                    f"/modules/{i}/name",
                )
            )
        elif count != module.parameter_count:
            issues.append(
                make_error(
                    "parameter-count-mismatch",
                    f"module {module.name!r} has {count} parameters in the model, the blueprint says {module.parameter_count}",
                    f"/modules/{i}/parameter_count",
                )
            )
    return issues
