"""Blueprints in PyTorch checkpoints (.pt/.pth/.bin/.ckpt) that hold a dict.

The blueprint is the top-level key `__gradient_blueprint__`, holding plain JSON values (dicts,
lists, str, float, int, bool) so `torch.load(weights_only=True)` reads it. Checkpoints are only
ever read with `weights_only=True`: a checkpoint that needs arbitrary unpickling (custom classes,
functions) is refused with `unsafe-checkpoint`, never unpickled.

Writing loads the checkpoint (memory-mapped when it is in the zip format, so tensors are not read
into memory up front), sets or deletes the key, and `torch.save`s the dict into a temp file that
replaces the target atomically. Other keys, their order and every tensor's values are kept; a
legacy (non-zip) checkpoint comes back in the zip format torch writes today.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import IO, Any, NoReturn, cast

from blueprint_format import Blueprint, TensorInfo, atomic_writer
from blueprint_format.errors import ContainerError, make_error
from converters.base import (
    CHECKPOINT_KEY,
    Converter,
    WriteResult,
    bad_container,
    io_error,
    parse_embedded,
    require_file,
    same_file,
)

#: torch dtype name -> safetensors dtype code (for the binding check).
TORCH_TO_SAFETENSORS = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "complex64": "C64",
}


class _RecordingWriter:
    """A write-only file wrapper that remembers the OSError a write raised."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return int(self.fh.write(data))
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _is_zip_checkpoint(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def load_checkpoint(path: Path) -> Any:
    """`torch.load(path, weights_only=True)` on CPU, memory-mapped when possible.

    A checkpoint the restricted unpickler refuses (it needs arbitrary code) raises
    unsafe-checkpoint; anything else that is not a readable checkpoint raises bad-container.
    """
    import torch

    require_file(path)
    try:
        mmap = _is_zip_checkpoint(path)
    except OSError as exc:
        raise io_error(path, exc) from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "WeightsUnpickler" in text:
            _refuse_restricted(path, _unpickler_reason(text))
        raise bad_container(path, f"not a PyTorch checkpoint: {text[:200]}") from None
    except OSError as exc:
        raise io_error(path, exc) from None
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # torch raises RuntimeError, EOFError, ValueError... for corrupt files
        raise bad_container(
            path, f"not a readable PyTorch checkpoint: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None


def _unpickler_reason(text: str) -> str:
    """torch's one-line reason (e.g. "Unsupported global: GLOBAL mod.Class"), without its advice;
    it may follow the "WeightsUnpickler error:" label on the same line or on a later one."""
    _, _, rest = text.partition("WeightsUnpickler error:")
    for line in rest.splitlines():
        line = line.split(". Please", 1)[0].strip()
        if line and not line.startswith("Check the documentation"):
            return line
    return "it needs objects other than tensors and plain containers"


def _refuse_restricted(path: Path, reason: str) -> NoReturn:
    """Refuse a checkpoint the restricted loader will not read: unsafe-checkpoint when it names
    objects to construct (code would run), bad-container when it only uses a pickle feature the
    restricted loader does not implement (e.g. LONG4, an integer of more than 255 bytes)."""
    match = re.search(r"Unsupported operand (\d+)", reason)
    if match is not None:
        code = int(match.group(1))
        name = next((n for n, v in vars(pickle).items() if n.isupper() and v == bytes([code])), f"{code}")
        raise bad_container(
            path,
            f"the restricted loader cannot read pickle opcode {name} ({code})"
            + (": an integer of more than 255 bytes, which no blueprint holds" if name == "LONG4" else ""),
        )
    raise ContainerError(
        make_error("unsafe-checkpoint", f"{path}: refused; loading it would need arbitrary unpickling ({reason[:200]})")
    )


def _state_dict(obj: Any) -> Mapping[str, Any] | None:
    """The tensor mapping inside a checkpoint: the dict itself, or its `state_dict`/`model` entry."""
    import torch

    if not isinstance(obj, Mapping):
        return None
    candidates = [obj] + [
        obj[k] for k in ("state_dict", "model", "model_state_dict") if isinstance(obj.get(k), Mapping)
    ]
    for cand in candidates:
        tensors = {k: v for k, v in cand.items() if k != CHECKPOINT_KEY}
        if tensors and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
            return tensors
    return None


def _require_dict(obj: Any, path: Path) -> MutableMapping[str, Any]:
    """The checkpoint's top-level dict; any other top-level object is unsupported-container."""
    if not isinstance(obj, MutableMapping):
        raise ContainerError(
            make_error(
                "unsupported-container",
                f"{path}: the checkpoint holds a {type(obj).__name__}, not a dict; "
                "there is no place for a blueprint",
            )
        )
    return obj


def _not_plain(value: Any, depth: int = 0) -> str | None:
    """Why `value` is not plain (dicts with string keys, lists, str, int, float, bool, None); None if it is.

    None is JSON null, which a valid blueprint may hold inside `extensions`.
    """
    if depth > 64:
        return "nested too deeply"
    if value is None or isinstance(value, (str, bool, int, float)):
        return None
    if isinstance(value, list):
        for item in value:
            problem = _not_plain(item, depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"a {type(key).__name__} key"
            problem = _not_plain(item, depth + 1)
            if problem:
                return problem
        return None
    return f"a {type(value).__name__} value"


class TorchCheckpointConverter(Converter):
    """Blueprint under a top-level key of a dict checkpoint."""

    kind = "torch"

    def read(self, path: Path) -> Blueprint | None:
        obj = _require_dict(load_checkpoint(path), path)
        if CHECKPOINT_KEY not in obj:
            return None
        value = obj[CHECKPOINT_KEY]
        where = f"{path} ({CHECKPOINT_KEY!r})"
        problem = _not_plain(value)
        if problem:
            raise bad_container(path, f"{CHECKPOINT_KEY!r} must hold plain JSON values only: {problem}")
        try:
            text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise bad_container(path, f"{CHECKPOINT_KEY!r} does not hold plain JSON values: {exc}") from None
        return parse_embedded(text, where)

    def tensors(self, path: Path) -> list[TensorInfo] | None:
        sd = _state_dict(load_checkpoint(path))
        if sd is None:
            return None
        out = []
        for name, t in sd.items():
            code = TORCH_TO_SAFETENSORS.get(str(t.dtype).removeprefix("torch."))
            if code is None:
                return None
            out.append(TensorInfo(name=name, dtype=code, shape=tuple(int(d) for d in t.shape)))
        return out

    def write(self, path: Path, bp: Blueprint, out: Path | None = None, **opts: Any) -> WriteResult:
        value = bp.to_json()
        return self._update(path, out, lambda d: d.__setitem__(CHECKPOINT_KEY, value))

    def remove(self, path: Path, out: Path | None = None, **opts: Any) -> WriteResult:
        def drop(d: MutableMapping[str, Any]) -> bool:
            return d.pop(CHECKPOINT_KEY, None) is not None

        return self._update(path, out, drop)

    def _update(self, path: Path, out: Path | None, edit: Any) -> WriteResult:
        import torch

        obj = _require_dict(load_checkpoint(path), path)
        changed = edit(obj) is not False
        target = out if out is not None else path
        if not changed and (out is None or same_file(out, path)):
            return WriteResult(path=path, changed=False)
        with atomic_writer(target) as fh:
            writer = _RecordingWriter(fh)
            try:
                torch.save(obj, cast(IO[bytes], writer))
            except Exception as exc:
                # torch reports a failed write as a RuntimeError; surface the OS error it swallowed.
                if writer.error is not None:
                    raise writer.error from None
                if isinstance(exc, OSError):
                    raise
                raise bad_container(
                    path, f"cannot save the checkpoint: {type(exc).__name__}: {exc}"
                ) from None
        return WriteResult(path=target, changed=changed, files=[target])
