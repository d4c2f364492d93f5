"""The one surface every container converter offers, and helpers they share.

A converter embeds a blueprint into a model container, extracts it, and removes it, leaving
everything else in the container as it was. Converters import their container library lazily so
that importing this package stays cheap.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blueprint_format import (
    Blueprint,
    BlueprintError,
    BlueprintIOError,
    BlueprintValidationError,
    ContainerError,
    TensorInfo,
    dumps,
    loads,
)
from blueprint_format.errors import make_error
from blueprint_format.jsonio import sha256_digest
from blueprint_format.paths import require_regular_input

#: Key under which the canonical blueprint JSON is stored in key/value metadata (safetensors, ONNX).
METADATA_KEY = "gradient_blueprint"
#: Key under which the spec version of the embedded blueprint is stored beside it.
SPEC_VERSION_KEY = "gradient_blueprint.spec_version"
#: Top-level key of a PyTorch checkpoint dict holding the blueprint as plain JSON values.
CHECKPOINT_KEY = "__gradient_blueprint__"
#: File name of the full blueprint beside a model card or in a model folder.
BLUEPRINT_FILE = "blueprint.json"


@dataclass
class WriteResult:
    """What a write or remove did: where it wrote, whether in place, and anything worth a warning."""

    path: Path
    changed: bool = True
    in_place: bool = False
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: The digest of the blueprint the write replaced or removed (None: the container held none).
    replaced: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "changed": self.changed,
            "in_place": self.in_place,
            "files": [str(f) for f in self.files],
            "warnings": list(self.warnings),
            "replaced": self.replaced,
        }


class Converter(ABC):
    """Embed, extract and remove a blueprint in one kind of container."""

    #: Short name of the container kind (shown in messages and `--json` output).
    kind: str = ""

    @abstractmethod
    def read(self, path: Path) -> Blueprint | None:
        """The blueprint held by the container at `path`, or None when it holds none.

        Raises ContainerError for a malformed container and a BlueprintError subclass when the
        embedded document is not a valid blueprint.
        """

    @abstractmethod
    def write(self, path: Path, bp: Blueprint, out: Path | None = None, **opts: Any) -> WriteResult:
        """Embed `bp` into the container at `path` (replacing any previous blueprint).

        Writes to `out` when given, else updates `path`. Everything else in the container is kept.
        """

    @abstractmethod
    def remove(self, path: Path, out: Path | None = None, **opts: Any) -> WriteResult:
        """Remove the blueprint from the container; `changed` is False when it held none."""

    def tensors(self, path: Path) -> list[TensorInfo] | None:
        """The model's tensor inventory when this container exposes it (for the binding check)."""
        return None


def bad_container(path: Path | str, message: str, location: str = "") -> ContainerError:
    """A `bad-container` error naming the file and, when known, where in it the problem is."""
    where = f" ({location})" if location else ""
    return ContainerError(make_error("bad-container", f"{path}{where}: {message}"))


def io_error(path: Path | str, exc: OSError | str, code: str = "io-error") -> BlueprintIOError:
    """An I/O error (exit status 2) with the OS's reason."""
    reason = exc if isinstance(exc, str) else (exc.strerror or str(exc))
    return BlueprintIOError(make_error(code, f"{path}: {reason}"))


def require_file(path: Path) -> None:
    """Raise unless `path` is an existing regular file (symlinks to one are followed): a missing
    file is `io-error`, a FIFO, device, socket or folder `not-a-regular-file`, refused before it is
    opened (a FIFO would block the reader forever)."""
    require_regular_input(path)


def parse_embedded(data: bytes | str, where: str) -> Blueprint:
    """Parse and fully validate an embedded blueprint document, naming the container in errors."""
    try:
        return loads(data)
    except BlueprintError as exc:
        # Keep the codes and JSON pointers, but say which container held the document.
        first = exc.issues[0]
        located = make_error(
            first.code, f"{where}: {first.message}", first.path, line=first.line, column=first.column
        )
        raise type(exc)([located, *exc.issues[1:]]) from None


def canonical_text(bp: Blueprint) -> str:
    """The RFC 8785 canonical JSON of `bp` as text."""
    try:
        return dumps(bp).decode("utf-8")
    except BlueprintError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. an integer beyond 2**53 in extensions
        raise BlueprintValidationError(
            make_error("out-of-range", f"the blueprint has no canonical JSON form: {exc}")
        ) from None


@contextlib.contextmanager
def wrap_library_errors(path: Path, what: str, os_code: str = "io-error") -> Iterator[None]:
    """Turn anything a container library raises into a coded error (never a traceback).

    BlueprintErrors pass through; OSErrors become `os_code` (exit status 2); everything else is a
    malformed container.
    """
    try:
        yield
    except BlueprintError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except OSError as exc:
        raise io_error(path, exc, os_code) from None
    except Exception as exc:  # libraries raise many unrelated types for malformed input
        raise bad_container(path, f"{what}: {type(exc).__name__}: {exc}") from None


def same_file(a: Path, b: Path) -> bool:
    """True when `a` and `b` name the same file (or the same not-yet-existing path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def blueprint_from_metadata(metadata: dict[str, str], where: str) -> Blueprint | None:
    """The blueprint stored under METADATA_KEY in string key/value metadata, or None.

    The spec-version entry, when present, must agree with the document's own `spec_version`.
    """
    text = metadata.get(METADATA_KEY)
    if text is None:
        return None
    bp = parse_embedded(text, where)
    version = metadata.get(SPEC_VERSION_KEY)
    if version is not None and version != bp.spec_version:
        raise bad_container(
            where, f"{SPEC_VERSION_KEY} is {version!r} but the embedded blueprint says {bp.spec_version!r}"
        )
    return bp


def text_digest(text: str | None) -> str | None:
    """The digest of an embedded blueprint from its stored text, which SPEC 16 requires to be the
    canonical form (so its SHA-256 is the blueprint digest) - without parsing or validating it, so
    that replacing a broken or huge blueprint costs nothing."""
    if text is None:
        return None
    return sha256_digest(text.encode("utf-8", "surrogatepass"))


def metadata_entries(bp: Blueprint) -> dict[str, str]:
    """The two key/value entries that carry `bp` (safetensors `__metadata__`, ONNX metadata_props)."""
    return {METADATA_KEY: canonical_text(bp), SPEC_VERSION_KEY: bp.spec_version}
