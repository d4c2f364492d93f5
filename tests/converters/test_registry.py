"""The registry picks a converter from the target: folder, suffix, name, then content sniffing."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest
import torch

from blueprint_format import BlueprintIOError, ContainerError
from converters import kind_of, make_converter
from converters.model_card import ModelCardConverter
from tests.converters.converter_blueprints import build_blueprint
from tests.converters.helpers import leftovers, small_onnx_model, write_safetensors


@pytest.fixture
def samples(tmp_path: Path) -> dict[str, Path]:
    st = write_safetensors(tmp_path / "w.safetensors")
    pt = tmp_path / "w.pt"
    torch.save({"a": torch.ones(1)}, pt)
    legacy = tmp_path / "legacy.pt"
    torch.save({"a": torch.ones(1)}, legacy, _use_new_zipfile_serialization=False)
    ox = tmp_path / "w.onnx"
    onnx.save(small_onnx_model(), str(ox))
    card = tmp_path / "README.md"
    card.write_text("---\nlicense: mit\n---\n")
    return {"safetensors": st, "torch": pt, "torch-legacy": legacy, "onnx": ox, "model-card": card}


def test_by_suffix_and_folder(samples: dict[str, Path], tmp_path: Path) -> None:
    for kind, path in samples.items():
        assert kind_of(path) == kind.split("-legacy")[0]
    assert kind_of(tmp_path) == "model-folder"


def test_by_content_without_suffix(samples: dict[str, Path], tmp_path: Path) -> None:
    for kind, path in samples.items():
        renamed = tmp_path / f"renamed-{kind}"
        renamed.write_bytes(path.read_bytes())
        expected = "model-card" if kind == "model-card" else kind.split("-legacy")[0]
        assert kind_of(renamed) == expected, kind
    readme = tmp_path / "README"
    readme.write_text("# no front matter\n")
    assert kind_of(readme) == "model-card"


def test_unknown_and_missing(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("plain text")
    with pytest.raises(ContainerError) as info:
        kind_of(tmp_path / "notes.txt")
    assert info.value.code == "unsupported-container"
    with pytest.raises(BlueprintIOError):
        kind_of(tmp_path / "absent.safetensors")
    with pytest.raises(ContainerError):
        make_converter("zip")


def test_card_write_fault_leaves_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    card = tmp_path / "README.md"
    card.write_text("---\nlicense: mit\n---\nbody\n")
    original = card.read_bytes()
    real = os.replace

    def fail_for_card(src: str, dst: str) -> None:
        if str(dst).endswith("README.md"):
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", fail_for_card)
    with pytest.raises(BlueprintIOError) as info:
        ModelCardConverter().write(card, build_blueprint([("a", 1)]))
    assert info.value.code == "write-failed"
    assert card.read_bytes() == original and leftovers(tmp_path) == []
    assert ModelCardConverter().read(card) is None  # the card still holds no blueprint
