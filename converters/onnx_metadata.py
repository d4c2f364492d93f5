"""Blueprints in an ONNX model's `metadata_props`, leaving weights and external data untouched.

The model is loaded with `load_external_data=False`, so external-data models (and models over the
2 GB protobuf limit, which must use external data) are handled without reading their weights.
Tensors stored externally keep their `external_data` entries (relative locations), and the data
files are never written, so they still resolve after the write as long as the model stays in the
same folder. The result is serialized by protobuf directly (not `onnx.save`, which may write
external data) and written atomically.

ONNX initializer names are not the model's state-dict names, so this container does not expose
a tensor inventory for the binding check.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blueprint_format import Blueprint, atomic_write_bytes
from blueprint_format.errors import ContainerError, make_error
from converters.base import (
    METADATA_KEY,
    SPEC_VERSION_KEY,
    Converter,
    WriteResult,
    bad_container,
    blueprint_from_metadata,
    metadata_entries,
    require_file,
    same_file,
    wrap_library_errors,
)

if TYPE_CHECKING:
    import onnx

#: Protobuf refuses to parse or serialize messages over 2 GB.
PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: Path) -> onnx.ModelProto:
    """Parse the model proto without its external data; refuse files that are not ONNX models."""
    import onnx

    require_file(path)
    size = path.stat().st_size
    if size > PROTOBUF_LIMIT:
        raise bad_container(
            path, f"{size} bytes exceeds the 2 GB protobuf limit; weights must be external data"
        )
    with wrap_library_errors(path, "not a valid ONNX protobuf"):
        model = onnx.load(str(path), load_external_data=False)
    # Protobuf parses many byte strings (even an empty file) as a message; a model has a graph.
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise bad_container(path, "not an ONNX model (no ir_version or graph)")
    return model


def _external_locations(model: onnx.ModelProto) -> list[str]:
    """Relative locations of external data files the model refers to."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    locations: set[str] = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return sorted(locations)


def _our_props(model: onnx.ModelProto, path: Path) -> dict[str, str]:
    """metadata_props as a dict; a model with one of our keys twice is bad-container."""
    meta: dict[str, str] = {}
    for prop in model.metadata_props:
        if prop.key in meta and prop.key in (METADATA_KEY, SPEC_VERSION_KEY):
            raise bad_container(path, f"metadata_props holds {prop.key!r} twice")
        meta[prop.key] = prop.value
    return meta


class OnnxConverter(Converter):
    """Blueprint in ModelProto.metadata_props."""

    kind = "onnx"

    def read(self, path: Path) -> Blueprint | None:
        model = load_model(path)
        return blueprint_from_metadata(_our_props(model, path), f"{path} (metadata_props[{METADATA_KEY!r}])")

    def write(self, path: Path, bp: Blueprint, out: Path | None = None, **opts: Any) -> WriteResult:
        return self._update(path, out, metadata_entries(bp))

    def remove(self, path: Path, out: Path | None = None, **opts: Any) -> WriteResult:
        return self._update(path, out, None)

    def _update(self, path: Path, out: Path | None, entries: dict[str, str] | None) -> WriteResult:
        """Set (or, with None, delete) our two entries; other entries keep their order and values."""
        model = load_model(path)
        _our_props(model, path)  # refuses duplicated keys
        props = [(p.key, p.value) for p in model.metadata_props]
        kept = [(k, v) for k, v in props if k not in (METADATA_KEY, SPEC_VERSION_KEY)]
        if entries is None:
            new = kept
        else:
            # Replace a previous blueprint where it stood; otherwise append.
            new, placed = [], False
            for k, v in props:
                if k in (METADATA_KEY, SPEC_VERSION_KEY):
                    if not placed:
                        new.extend(entries.items())
                        placed = True
                else:
                    new.append((k, v))
            if not placed:
                new.extend(entries.items())
        changed = new != props
        target = out if out is not None else path
        if not changed and (out is None or same_file(out, path)):
            return WriteResult(path=path, changed=False)
        self._check_external_data(model, path, target)
        del model.metadata_props[:]
        for k, v in new:
            model.metadata_props.add(key=k, value=v)
        with wrap_library_errors(path, "cannot serialize the model"):
            data = model.SerializeToString()
        atomic_write_bytes(target, data)
        return WriteResult(path=target, changed=changed, files=[target])

    @staticmethod
    def _check_external_data(model: onnx.ModelProto, source: Path, target: Path) -> None:
        """Refuse to write a model to a folder where its external data would not resolve."""
        if source.resolve().parent == target.resolve().parent:
            return
        missing = [loc for loc in _external_locations(model) if not os.path.exists(target.parent / loc)]
        if missing:
            raise ContainerError(
                make_error(
                    "write-failed",
                    f"{target}: the model's external data ({', '.join(missing)}) would not resolve from "
                    f"{target.parent}; write into the model's folder or copy the data files first",
                )
            )

    def tensors(self, path: Path) -> None:
        return None


__all__ = ["OnnxConverter", "load_model"]
