"""Model folders (single file and sharded), the registry's binding check, and the Hub wrappers (offline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import ModelCard
from safetensors import safe_open

from blueprint_format import (
    BindingError,
    BlueprintError,
    BlueprintIOError,
    ContainerError,
    dumps,
    model_tensors,
)
from converters import BLUEPRINT_FILE, METADATA_KEY, embed, extract, kind_of, strip
from converters.hub import pull, push
from converters.model_folder import ModelFolderConverter
from tests.converters.converter_blueprints import blueprint_for_tensors
from tests.converters.helpers import tensor_buffer_digest, write_safetensors

CONV = ModelFolderConverter()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    write_safetensors(d / "model.safetensors", {"format": "pt"})
    (d / "config.json").write_text('{"model_type": "bert"}')
    (d / "README.md").write_text("---\nlicense: mit\n---\n# A model\n")
    return d


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    d = tmp_path / "sharded"
    d.mkdir()
    write_safetensors(d / "model-00001-of-00002.safetensors", {"format": "pt"}, seed=1)
    import torch
    from safetensors.torch import save_file

    save_file(
        {"head.weight": torch.ones(3, 2), "head.bias": torch.zeros(3)},
        str(d / "model-00002-of-00002.safetensors"),
        metadata={"format": "pt"},
    )
    weight_map = {}
    for shard in sorted(d.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            weight_map.update({k: shard.name for k in f.keys()})  # noqa: SIM118 (safe_open has no __iter__)
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


def test_embed_writes_sidecar_and_card_and_binds(folder: Path) -> None:
    weights = (folder / "model.safetensors").read_bytes()
    bp = blueprint_for_tensors(model_tensors(folder))
    result = embed(bp, folder)
    assert (folder / BLUEPRINT_FILE).read_bytes() == dumps(bp)
    assert {p.name for p in result.files} == {BLUEPRINT_FILE, "README.md"}
    assert ModelCard.load(folder / "README.md").data.to_dict()["license"] == "mit"
    assert (folder / "model.safetensors").read_bytes() == weights  # weights untouched by default
    assert extract(folder) == bp
    assert kind_of(folder) == "model-folder"


def test_extract_falls_back_card_then_weights(folder: Path) -> None:
    bp = blueprint_for_tensors(model_tensors(folder))
    embed(bp, folder, into_weights=True)
    (folder / BLUEPRINT_FILE).unlink()
    assert extract(folder) == bp  # from the card's embedded block
    (folder / "README.md").write_text("# plain card\n")
    assert extract(folder) == bp  # from the safetensors header
    strip(folder / "model.safetensors")
    assert extract(folder) is None


def test_strip_removes_everywhere(folder: Path) -> None:
    card = (folder / "README.md").read_bytes()
    buffer = tensor_buffer_digest(folder / "model.safetensors")
    bp = blueprint_for_tensors(model_tensors(folder))
    embed(bp, folder, into_weights=True)
    assert strip(folder).changed
    assert not (folder / BLUEPRINT_FILE).exists()
    assert (folder / "README.md").read_bytes() == card
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert METADATA_KEY not in (f.metadata() or {})
    assert tensor_buffer_digest(folder / "model.safetensors") == buffer
    assert extract(folder) is None
    assert not strip(folder).changed


def test_folder_without_card_gets_one(folder: Path) -> None:
    (folder / "README.md").unlink()
    bp = blueprint_for_tensors(model_tensors(folder))
    embed(bp, folder)
    assert ModelCard.load(folder / "README.md").data.to_dict()["gradient_blueprint"]["file"] == BLUEPRINT_FILE


def test_embed_to_out_folder_leaves_source(folder: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    bp = blueprint_for_tensors(model_tensors(folder))
    out = tmp_path / "published"
    embed(bp, folder, out)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert (out / BLUEPRINT_FILE).read_bytes() == dumps(bp)
    assert extract(out) == bp


def test_sharded_binding_and_weights(sharded: Path) -> None:
    tensors = model_tensors(sharded)
    assert {t.name for t in tensors} >= {"head.weight", "encoder.layer.0.attn.weight"}
    buffers = {p.name: tensor_buffer_digest(p) for p in sharded.glob("*.safetensors")}
    bp = blueprint_for_tensors(tensors)
    embed(bp, sharded, into_weights=True)
    for shard in sharded.glob("*.safetensors"):
        assert tensor_buffer_digest(shard) == buffers[shard.name]
        with safe_open(str(shard), "pt") as f:
            assert f.metadata()[METADATA_KEY] == dumps(bp).decode()
    assert extract(sharded) == bp


def test_blueprint_for_another_model_is_refused(folder: Path, sharded: Path) -> None:
    other = blueprint_for_tensors(model_tensors(sharded))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(BindingError) as info:
        embed(other, folder)
    assert info.value.code == "structure-digest-mismatch"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    result = embed(other, folder, force=True)
    assert result.warnings and "structure-digest-mismatch" in result.warnings[0]
    assert extract(folder) == other


def test_unsafe_shard_name_in_index(sharded: Path) -> None:
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../x.safetensors"}})
    )
    with pytest.raises(ContainerError) as info:
        CONV.read(sharded)
    assert info.value.code == "unsafe-path"


def test_invalid_sidecar_is_reported_not_skipped(folder: Path) -> None:
    (folder / BLUEPRINT_FILE).write_text('{"spec_version": "2.0.0"}')
    with pytest.raises(BlueprintError) as info:
        extract(folder)
    assert info.value.code in {"unsupported-version", "missing-field"}


@pytest.mark.slow
def test_real_minilm_folder(tmp_path: Path, minilm_dir: Path) -> None:
    d = tmp_path / "minilm"
    shutil.copytree(minilm_dir, d)
    card_meta = ModelCard.load(d / "README.md").data.to_dict()
    bp = blueprint_for_tensors(model_tensors(d))
    embed(bp, d)
    assert extract(d) == bp
    after = ModelCard.load(d / "README.md").data.to_dict()
    assert {k: v for k, v in after.items() if k != "gradient_blueprint"} == card_meta
    strip(d)
    assert (d / "README.md").read_bytes() == (minilm_dir / "README.md").read_bytes()


# ---- Hub wrappers, offline -------------------------------------------------------------------------


class RecordingApi:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def upload_file(self, **kw: Any) -> None:
        self.calls.append(kw)


def test_push_uploads_blueprint_and_card(folder: Path) -> None:
    embed(blueprint_for_tensors(model_tensors(folder)), folder)
    api = RecordingApi()
    assert push(folder, "org/model", api=api, revision="main") == [BLUEPRINT_FILE, "README.md"]
    assert [c["path_in_repo"] for c in api.calls] == [BLUEPRINT_FILE, "README.md"]
    assert all(c["repo_id"] == "org/model" and c["repo_type"] == "model" for c in api.calls)
    assert Path(api.calls[0]["path_or_fileobj"]).read_bytes() == (folder / BLUEPRINT_FILE).read_bytes()


def test_push_without_blueprint_is_io_error(folder: Path) -> None:
    with pytest.raises(BlueprintIOError):
        push(folder, "org/model", api=RecordingApi())


def test_push_failure_is_io_error(folder: Path) -> None:
    embed(blueprint_for_tensors(model_tensors(folder)), folder)

    class Failing:
        def upload_file(self, **kw: Any) -> None:
            raise ConnectionError("network unreachable")

    with pytest.raises(BlueprintIOError) as info:
        push(folder, "org/model", api=Failing())
    assert "network unreachable" in str(info.value)


def test_pull_from_local_folder(folder: Path) -> None:
    bp = blueprint_for_tensors(model_tensors(folder))
    embed(bp, folder)
    assert pull(str(folder)) == bp


def _fake_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """The on-disk layout of the Hugging Face cache, so hf_hub_download works with no network."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / ("models--" + repo_id.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def test_pull_through_hf_hub_download_offline(folder: Path, tmp_path: Path) -> None:
    bp = blueprint_for_tensors(model_tensors(folder))
    embed(bp, folder)
    cache = tmp_path / "hf-cache"
    _fake_cache(
        cache,
        "org/model",
        {
            BLUEPRINT_FILE: (folder / BLUEPRINT_FILE).read_bytes(),
            "README.md": (folder / "README.md").read_bytes(),
        },
    )
    assert pull("org/model", cache_dir=cache, local_files_only=True) == bp
    # A card alone in the cache is enough while its blueprint is small enough to be embedded.
    cache2 = tmp_path / "hf-cache-2"
    _fake_cache(cache2, "org/model", {"README.md": (folder / "README.md").read_bytes()})
    assert pull("org/model", cache_dir=cache2, local_files_only=True) == bp


def test_pull_uncached_offline_is_io_error(tmp_path: Path) -> None:
    with pytest.raises(BlueprintIOError) as info:
        pull("org/absent", cache_dir=tmp_path / "empty", local_files_only=True)
    assert info.value.code == "io-error"
