"""Pick the converter for a target, and the embed / extract / strip operations built on it.

The choice is made from the target alone: a folder is a model folder; otherwise the suffix
decides (.safetensors, .onnx, .pt/.pth/.bin/.ckpt, .md); a file with another suffix is sniffed
from its first bytes (safetensors length + '{', zip or pickle magic, '---' front matter, ONNX's
leading ir_version field).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blueprint_format import Blueprint, check_binding
from blueprint_format.atomic import folder_lock
from blueprint_format.errors import BindingError, ContainerError, Issue, make_error
from blueprint_format.paths import require_regular_input
from blueprint_format.st_header import looks_like_safetensors
from converters.base import Converter, WriteResult, canonical_text, io_error

SUFFIXES = {
    ".safetensors": "safetensors",
    ".onnx": "onnx",
    ".pt": "torch",
    ".pth": "torch",
    ".bin": "torch",
    ".ckpt": "torch",
    ".md": "model-card",
}


def make_converter(kind: str) -> Converter:
    """A converter instance for a container kind (imports only that converter's module)."""
    if kind == "safetensors":
        from converters.safetensors_header import SafetensorsConverter

        return SafetensorsConverter()
    if kind == "onnx":
        from converters.onnx_metadata import OnnxConverter

        return OnnxConverter()
    if kind == "torch":
        from converters.torch_checkpoint import TorchCheckpointConverter

        return TorchCheckpointConverter()
    if kind == "model-card":
        from converters.model_card import ModelCardConverter

        return ModelCardConverter()
    if kind == "model-folder":
        from converters.model_folder import ModelFolderConverter

        return ModelFolderConverter()
    raise ContainerError(make_error("unsupported-container", f"unknown container kind {kind!r}"))


KINDS = ("safetensors", "onnx", "torch", "model-card", "model-folder")


def sniff(path: Path) -> str | None:
    """Guess the container kind from a file's first bytes (None when nothing fits)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise io_error(path, exc) from None
    if looks_like_safetensors(head):
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    if head.lstrip(b"\xef\xbb\xbf").startswith(b"---"):
        return "model-card"
    if head[:1] == b"\x08":  # ModelProto field 1 (ir_version), varint
        return "onnx"
    return None


def kind_of(target: Path) -> str:
    """The container kind of `target` (which must exist: a folder, or a regular file, since a FIFO
    or device is refused before anything opens it)."""
    if target.is_dir():
        return "model-folder"
    if not target.exists():
        raise io_error(target, "no such file or folder")
    require_regular_input(target)
    kind = SUFFIXES.get(target.suffix.lower())
    if kind is None and target.name.lower() == "readme":
        kind = "model-card"
    if kind is None:
        kind = sniff(target)
    if kind is None:
        raise ContainerError(
            make_error(
                "unsupported-container",
                f"{target}: not a container this tool knows (safetensors, ONNX, PyTorch checkpoint, "
                "model card, model folder)",
            )
        )
    return kind


def converter_for(target: Path) -> Converter:
    """The converter that handles `target`."""
    return make_converter(kind_of(target))


def extract(target: Path) -> Blueprint | None:
    """The blueprint held by `target`, or None."""
    return converter_for(target).read(target)


def binding_issues(bp: Blueprint, target: Path) -> list[Issue] | None:
    """Binding problems of `bp` against the model in `target`; None when the container has no tensor list."""
    tensors = converter_for(target).tensors(target)
    if tensors is None:
        return None
    return [i for i in check_binding(bp, tensors) if i.is_error]


def embed(
    bp: Blueprint, target: Path, out: Path | None = None, *, force: bool = False, **opts: Any
) -> WriteResult:
    """Embed a (validated) blueprint into `target`, refusing one made for another model unless `force`.

    With `force`, binding problems become warnings on the result.
    """
    canonical_text(bp)  # refuses a blueprint without a canonical form before anything is touched
    converter = converter_for(target)
    warnings: list[str] = []
    tensors = converter.tensors(target)
    if tensors is not None:
        issues = [i for i in check_binding(bp, tensors) if i.is_error]
        if issues and not force:
            raise BindingError(issues)
        warnings = [f"embedded anyway (--force): {i}" for i in issues]
    with folder_lock(_lock_folder(target, out)):
        result = converter.write(target, bp, out, **opts)
    result.warnings = warnings + result.warnings
    return result


def strip(target: Path, out: Path | None = None, **opts: Any) -> WriteResult:
    """Remove the blueprint from `target` (written to `out` when given)."""
    converter = converter_for(target)
    with folder_lock(_lock_folder(target, out)):
        return converter.remove(target, out, **opts)


def _lock_folder(target: Path, out: Path | None) -> Path:
    """The folder whose files an update changes: it is locked for the whole read-change-write, so
    that concurrent embeds and strips of one container are applied one after the other (each on
    the result of the previous) instead of silently undoing each other."""
    dest = out if out is not None else target
    if dest.is_dir():
        return dest
    return dest.parent if str(dest.parent) else Path(".")
