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

import os
from pathlib import Path
from typing import Any

from blueprint_format import Blueprint, TensorInfo, load, model_tensors
from blueprint_format.binding import weight_files
from blueprint_format.errors import ContainerError
from converters.base import BLUEPRINT_FILE, Converter, WriteResult, io_error, text_digest
from converters.model_card import ModelCardConverter, confined
from converters.safetensors_header import SafetensorsConverter
from converters.torch_checkpoint import TorchCheckpointConverter

CARD_FILE = "README.md"


class ModelFolderConverter(Converter):
    """blueprint.json + model card (+ optionally the safetensors headers) of a model folder."""

    kind = "model-folder"

    def __init__(self, *, trusted_links: bool = False) -> None:
        """`trusted_links`: follow symlinks that leave the folder (only for folders this program
        made itself, such as a Hugging Face cache snapshot, whose files link into its blob store)."""
        self.trusted_links = trusted_links
        self.card = ModelCardConverter(trusted_links=trusted_links)
        self.safetensors = SafetensorsConverter()

    @staticmethod
    def _require_dir(path: Path) -> None:
        if not path.is_dir():
            raise io_error(path, "no such folder")

    def read(self, path: Path) -> Blueprint | None:
        self._require_dir(path)
        sidecar = path / BLUEPRINT_FILE
        if os.path.lexists(sidecar):  # a FIFO or a link out of the folder is refused, not skipped
            return load(confined(sidecar, path, self.trusted_links))
        card = path / CARD_FILE
        if os.path.lexists(card):
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
                    in_place=opts.get("in_place", False),
                )
                files.extend(result.files)
        replaced = self._current_digest(path)
        card_result = self.card.write(path / CARD_FILE, bp, out=dest / CARD_FILE)
        files.extend(card_result.files)
        return WriteResult(path=dest, files=files, replaced=replaced)

    def _current_digest(self, path: Path) -> str | None:
        """The digest of the blueprint the folder holds now (blueprint.json's, which SPEC 16.5
        requires to be canonical), read without validating it."""
        sidecar = path / BLUEPRINT_FILE
        if not sidecar.is_file():
            return None
        try:
            return text_digest(sidecar.read_bytes().decode("utf-8", "surrogateescape"))
        except OSError:
            return None

    def remove(self, path: Path, out: Path | None = None, **opts: Any) -> WriteResult:
        """Delete blueprint.json, strip the card, and strip the safetensors headers that carry one.

        With `out`, the stripped card (and stripped weight copies) are written there instead and
        nothing in the folder changes.
        """
        self._require_dir(path)
        dest = out if out is not None else path
        files: list[Path] = []
        changed = False
        replaced = self._current_digest(path)
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
                result = self.safetensors.remove(
                    shard, out=None if out is None else dest / shard.name, in_place=opts.get("in_place", False)
                )
                changed |= result.changed
                files.extend(result.files)
                replaced = replaced or result.replaced
        return WriteResult(path=dest, changed=changed, files=files, replaced=replaced if changed else None)
