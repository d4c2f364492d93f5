"""Model binding: tensor inventories, the structure digest, and a model folder's weight files.

The structure digest (SPEC.md, "Model binding") identifies a model's tensor layout without its
weights: SHA-256 over one line per tensor, `name TAB dtype TAB comma-separated shape LF`, sorted by
the UTF-8 bytes of the name. It can be recomputed from safetensors headers alone (st_header.py).

`weight_files` is the one reader of a model folder's shard index (`model.safetensors.index.json`),
used by the binding check here and by the model-folder converter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from blueprint_format.errors import BlueprintError, BlueprintIOError, ContainerError, Issue, make_error
from blueprint_format.jsonio import loads_json
from blueprint_format.limits import MAX_DOCUMENT_BYTES
from blueprint_format.models import Blueprint
from blueprint_format.paths import open_regular_input, read_regular_file, require_regular_input
from blueprint_format.semantic import unsafe_path_reason
from blueprint_format.st_header import (
    SAFETENSORS_DTYPE_BITS,
    SAFETENSORS_HEADER_CAP,
    SafetensorsHeader,
    TensorInfo,
    looks_like_safetensors,
    read_safetensors_header,
)

#: The shard index of a sharded Hugging Face model folder.
INDEX_FILE = "model.safetensors.index.json"

__all__ = [
    "INDEX_FILE",
    "SAFETENSORS_DTYPE_BITS",
    "SAFETENSORS_HEADER_CAP",
    "SafetensorsHeader",
    "TensorInfo",
    "check_binding",
    "model_tensors",
    "read_safetensors_header",
    "structure_digest",
    "weight_files",
]


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


def _index_problem(index: Path, message: str) -> ContainerError:
    return ContainerError(make_error("bad-container", f"{index}: {message}"))


def _shard_names(index: Path) -> list[str]:
    """The distinct shard file names of a shard index, sorted by their UTF-8 bytes (SPEC 16.5).

    The index is read like a blueprint document (strict JSON, bounded size, a regular file);
    `weight_map` must map tensor names to file names, and every file name must name a file in the
    folder itself (`unsafe-path` otherwise: SPEC 11's rules for relative paths, without folders).
    """
    data = read_regular_file(index, MAX_DOCUMENT_BYTES, lambda p, n: _index_problem(p, f"is {n} bytes"))
    try:
        parsed: Any = loads_json(data)
    except BlueprintError as exc:
        raise _index_problem(index, f"unreadable shard index: {exc.issues[0]}") from None
    weight_map = parsed.get("weight_map") if isinstance(parsed, dict) else None
    if not isinstance(weight_map, dict):
        raise _index_problem(index, "the shard index has no weight_map object")
    names = set(weight_map.values())
    if not all(isinstance(name, str) for name in names):
        raise _index_problem(index, "weight_map values must be file names (strings)")
    for name in sorted(names):
        reason = unsafe_path_reason(name) or ("names a subfolder" if "/" in name else None)
        if reason is not None:
            raise ContainerError(make_error("unsafe-path", f"{index}: shard {name!a} {reason}"))
    # Python orders strings by code point, which is the order of their UTF-8 bytes.
    return sorted(names)


def weight_files(folder: str | Path) -> list[Path]:
    """The folder's safetensors weight files: the shards its index names (sorted), else every
    regular `*.safetensors` file in it (sorted)."""
    folder = Path(folder)
    index = folder / INDEX_FILE
    if index.exists() or index.is_symlink():
        return [folder / name for name in _shard_names(index)]
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())


def model_tensors(path: str | Path) -> list[TensorInfo]:
    """Tensor inventory of a .safetensors file or a model folder (sharded or not), from headers only.

    Any other file is `unsupported-container` (an ONNX model's initializer names, for instance, are
    not the model's parameter names); a FIFO or device is refused without being opened.
    """
    p = Path(path)
    if p.is_dir():
        files = weight_files(p)
        if not files:
            raise ContainerError(make_error("unreadable-model", f"{p}: no .safetensors weights found"))
        return [t for f in files for t in read_safetensors_header(f).tensors]
    if not p.exists():
        raise BlueprintIOError(make_error("io-error", f"{p}: no such file or folder"))
    require_regular_input(p)
    if p.suffix.lower() != ".safetensors":
        with open_regular_input(p) as fh:
            head = fh.read(64)
        if not looks_like_safetensors(head):
            raise ContainerError(
                make_error(
                    "unsupported-container",
                    f"{p}: not a safetensors file; bind against the model's .safetensors weights or its folder",
                )
            )
    return read_safetensors_header(p).tensors


def _parameters_by_prefix(tensors: list[TensorInfo]) -> dict[str, int]:
    """Parameters of every name and dotted prefix of a name (a module's tensors share its prefix)."""
    counts: dict[str, int] = {}
    for t in tensors:
        numel = t.numel
        name = t.name
        counts[name] = counts.get(name, 0) + numel
        cut = name.rfind(".")
        while cut > 0:
            prefix = name[:cut]
            counts[prefix] = counts.get(prefix, 0) + numel
            cut = name.rfind(".", 0, cut)
    return counts


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
    counts = _parameters_by_prefix(tensors)
    for i, module in enumerate(bp.modules):
        count = counts.get(module.name)
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
