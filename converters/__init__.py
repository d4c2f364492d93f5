"""Converters: embed, extract and strip gradient blueprints in model containers.

Containers: safetensors headers, ONNX `metadata_props`, PyTorch checkpoints, Hugging Face model
cards and model folders (see SPEC.md, "Containers"). Each has the same small surface
(`Converter.read`, `write`, `remove`, `tensors`); `converter_for` picks one from the target.
Container libraries (torch, onnx, PyYAML, huggingface_hub) are imported only when used.
"""

from converters.base import (
    BLUEPRINT_FILE,
    CHECKPOINT_KEY,
    METADATA_KEY,
    SPEC_VERSION_KEY,
    Converter,
    WriteResult,
)
from converters.registry import (
    KINDS,
    binding_issues,
    converter_for,
    embed,
    extract,
    kind_of,
    make_converter,
    strip,
)

__all__ = [
    "BLUEPRINT_FILE",
    "CHECKPOINT_KEY",
    "KINDS",
    "METADATA_KEY",
    "SPEC_VERSION_KEY",
    "Converter",
    "WriteResult",
    "binding_issues",
    "converter_for",
    "embed",
    "extract",
    "kind_of",
    "make_converter",
    "strip",
]
