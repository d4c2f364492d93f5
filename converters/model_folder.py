"""Blueprints in a Hugging Face style model folder: blueprint.json, README.md and the weights.

Embedding writes `blueprint.json` (canonical JSON) and adds the blueprint to `README.md`
(created if absent); with `into_weights=True` it also embeds into the header of every safetensors
file (each shard of a sharded model, found through `model.safetensors.index.json`). The binding
check uses the tensor inventory from the safetensors headers (or a `pytorch_model.bin` state dict
when the folder has no safetensors).

Extraction looks in `blueprint.json`, then the card, then the safetensors headers, and returns the
first blueprint found.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from blueprint_format import Blueprint, TensorInfo, load, model_tensors
from blueprint_format.errors import ContainerError, make_error
from converters.base import BLUEPRINT_FILE, Converter, WriteResult, bad_container, io_error
from converters.model_card import ModelCardConverter
from converters.safetensors_header import SafetensorsConverter
from converters.torch_checkpoint import TorchCheckpointConverter

CARD_FILE = "README.md"
INDEX_FILE = "model.safetensors.index.json"
#: Shard indexes are small JSON files; refuse absurd ones before parsing.
MAX_INDEX_BYTES = 64 * 1024 * 1024


def weight_files(folder: Path) -> list[Path]:
    """The folder's safetensors files: the shards named by the index, else every *.safetensors file."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            if index.stat().st_size > MAX_INDEX_BYTES:
                raise bad_container(index, f"shard index exceeds {MAX_INDEX_BYTES} bytes")
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except OSError as exc:
            raise io_error(index, exc) from None
        except (ValueError, AttributeError) as exc:
            raise bad_container(index, f"unreadable shard index: {exc}") from None
        if not isinstance(weight_map, dict):
            raise bad_container(index, "shard index has no weight_map object")
        names = sorted({str(v) for v in weight_map.values()})
        for name in names:
            if "/" in name or "\\" in name or name in (".", ".."):
                raise ContainerError(
                    make_error("unsafe-path", f"{index}: shard {name!r} is not a file in the folder")
                )
        return [folder / n for n in names]
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())


class ModelFolderConverter(Converter):
    """blueprint.json + model card (+ optionally the safetensors headers) of a model folder."""

    kind = "model-folder"

    def __init__(self) -> None:
        self.card = ModelCardConverter()
        self.safetensors = SafetensorsConverter()

    @staticmethod
    def _require_dir(path: Path) -> None:
        if not path.is_dir():
            raise io_error(path, "no such folder")

    def read(self, path: Path) -> Blueprint | None:
        self._require_dir(path)
        sidecar = path / BLUEPRINT_FILE
        if sidecar.is_file():
            return load(sidecar)
        card = path / CARD_FILE
        if card.is_file():
            try:
                bp = self.card.read(card)
            except ContainerError as exc:
                if exc.code != "no-blueprint":
                    raise
                bp = None
            if bp is not None:
                return bp
        for shard in weight_files(path):
            if shard.is_file():
                bp = self.safetensors.read(shard)
                if bp is not None:
                    return bp
        return None

    def tensors(self, path: Path) -> list[TensorInfo] | None:
        self._require_dir(path)
        if weight_files(path):
            return model_tensors(path)
        bin_file = path / "pytorch_model.bin"
        if bin_file.is_file():
            return TorchCheckpointConverter().tensors(bin_file)
        return None

    def write(self, path: Path, bp: Blueprint, out: Path | None = None, **opts: Any) -> WriteResult:
        """Write blueprint.json and the card into `out` (default: the folder itself).

        With `into_weights=True`, also embed into each safetensors file (copies go to `out`).
        """
        self._require_dir(path)
        dest = out if out is not None else path
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise io_error(dest, exc, "write-failed") from None
        files: list[Path] = []
        if opts.get("into_weights"):
            for shard in weight_files(path):
                result = self.safetensors.write(
                    shard,
                    bp,
                    out=None if out is None else dest / shard.name,
                    reserve=opts.get("reserve", 0),
                    in_place=opts.get("in_place", True),
                )
                files.extend(result.files)
        card_result = self.card.write(path / CARD_FILE, bp, out=dest / CARD_FILE)
        files.extend(card_result.files)
        return WriteResult(path=dest, files=files)

    def remove(self, path: Path, out: Path | None = None, **opts: Any) -> WriteResult:
        """Delete blueprint.json, strip the card, and strip the safetensors headers that carry one.

        With `out`, the stripped card (and stripped weight copies) are written there instead and
        nothing in the folder changes.
        """
        self._require_dir(path)
        dest = out if out is not None else path
        files: list[Path] = []
        changed = False
        card = path / CARD_FILE
        if card.is_file():
            result = self.card.remove(card, out=None if out is None else dest / CARD_FILE)
            changed |= result.changed
            files.extend(result.files)
        sidecar = path / BLUEPRINT_FILE
        if out is None and sidecar.is_file():
            try:
                os.unlink(sidecar)
            except OSError as exc:
                raise io_error(sidecar, exc, "write-failed") from None
            changed = True
            files.append(sidecar)
        for shard in weight_files(path):
            if shard.is_file() and self.safetensors.read(shard) is not None:
                result = self.safetensors.remove(shard, out=None if out is None else dest / shard.name)
                changed |= result.changed
                files.extend(result.files)
        return WriteResult(path=dest, changed=changed, files=files)
