"""Helpers for converter tests: small real containers written by their own libraries."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path


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
