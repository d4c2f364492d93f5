"""gradient blueprints: the format (models, canonical JSON, digests, validation).

Public API. This package imports no torch, onnx or safetensors, so `blueprint validate` starts fast.
"""

from blueprint_format._version import SPEC_VERSION, __version__
from blueprint_format.api import digest, dump, dumps, from_json, load, loads
from blueprint_format.atomic import atomic_write_bytes, atomic_writer
from blueprint_format.binding import (
    SafetensorsHeader,
    TensorInfo,
    check_binding,
    model_tensors,
    read_safetensors_header,
    structure_digest,
)
from blueprint_format.errors import (
    ERROR_CODES,
    BindingError,
    BlueprintError,
    BlueprintIOError,
    BlueprintParseError,
    BlueprintValidationError,
    ContainerError,
    Issue,
    Severity,
)
from blueprint_format.models import Blueprint
from blueprint_format.schema import load_schema, schema_path
from blueprint_format.validator import validate, validate_file

__all__ = [
    "ERROR_CODES",
    "SPEC_VERSION",
    "BindingError",
    "Blueprint",
    "BlueprintError",
    "BlueprintIOError",
    "BlueprintParseError",
    "BlueprintValidationError",
    "ContainerError",
    "Issue",
    "SafetensorsHeader",
    "Severity",
    "TensorInfo",
    "__version__",
    "atomic_write_bytes",
    "atomic_writer",
    "check_binding",
    "digest",
    "dump",
    "dumps",
    "from_json",
    "load",
    "load_schema",
    "loads",
    "model_tensors",
    "read_safetensors_header",
    "schema_path",
    "structure_digest",
    "validate",
    "validate_file",
]
