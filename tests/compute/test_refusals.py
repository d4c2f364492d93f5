"""compute_blueprint refuses bad input with a clear, coded error; binding to weight files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import blueprint_format as bf
from reference_impl import ComputeError, ComputeInputError, compute_blueprint
from reference_impl.config import ConfigError
from reference_impl.model_binding import module_layout
from tests.compute.conftest import TinyNet, tiny_batches, tiny_loss


def test_nan_gradient_names_the_batch(tiny_net: TinyNet) -> None:
    calls = {"n": 0}

    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        calls["n"] += 1
        value = tiny_loss(model, batch)
        return value * float("nan") if calls["n"] == 4 else value

    with pytest.raises(ComputeError) as info:
        compute_blueprint(tiny_net, {"a": tiny_batches(1, 6)}, loss)
    assert "batch 3" in str(info.value) and "'a'" in str(info.value)
    assert info.value.exit_status == 1


def test_no_trainable_parameters(tiny_net: TinyNet) -> None:
    for p in tiny_net.parameters():
        p.requires_grad_(False)
    with pytest.raises(ComputeError) as info:
        compute_blueprint(tiny_net, {"a": tiny_batches(1, 5)}, tiny_loss)
    assert "no trainable parameters" in str(info.value)


def test_out_of_memory_is_reported(tiny_net: TinyNet) -> None:
    def loss(model: nn.Module, batch: object) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(ComputeError) as info:
        compute_blueprint(tiny_net, {"a": tiny_batches(1, 5)}, loss)
    assert "out of memory" in str(info.value) and "--batch-size" in str(info.value)


def test_too_few_examples_and_bad_weights(tiny_net: TinyNet) -> None:
    with pytest.raises(ComputeInputError) as info:
        compute_blueprint(tiny_net, {"a": tiny_batches(1, 3)}, tiny_loss)  # 24 examples < 32
    assert info.value.code == "aggregate-too-small" and info.value.exit_status == 1  # refused content
    with pytest.raises(ConfigError) as bad:  # an argument mistake: usage-error located at the setting
        compute_blueprint(tiny_net, {"a": tiny_batches(1, 5)}, tiny_loss, domain_weights={"zzz": 1.0})
    assert bad.value.code == "usage-error" and bad.value.field == "domain_weights"


def test_unreached_modules_are_left_out(tiny_net: TinyNet) -> None:
    tiny_net.extra = nn.Linear(3, 3)  # never used by forward
    bp = compute_blueprint(tiny_net, {"a": tiny_batches(1, 5)}, tiny_loss)
    assert "extra" not in [m.name for m in bp.modules]
    ext = bp.extensions["org.gradient-blueprints.reference-impl"]  # type: ignore[index]
    assert ext["unreached_modules"] == ["extra"]  # type: ignore[index]
    assert bf.validate(bp) == []


def test_weights_given_are_normalised(tiny_net: TinyNet) -> None:
    bp = compute_blueprint(tiny_net, {"a": tiny_batches(1, 5), "b": tiny_batches(2, 5)}, tiny_loss,
                           domain_weights={"a": 3, "b": 1})
    assert [d.weight for d in bp.domains] == [0.75, 0.25]


def test_binding_maps_task_model_names_to_the_base_checkpoint(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM, BertModel

    cfg = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                     max_position_embeddings=16)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(tmp_path, safe_serialization=True)
    model = BertForMaskedLM.from_pretrained(tmp_path)  # head freshly initialised, encoder named bert.*
    layout = module_layout(model, model_path=tmp_path)
    names = [m.name for m in layout.modules]
    assert "encoder.layer.0.attention.self.query" in names and not any(n.startswith("bert.") for n in names)
    assert any(n.startswith("cls.") for n in layout.unbound)
    g = torch.Generator().manual_seed(1)
    batches = [
        {"input_ids": torch.randint(5, 40, (8, 6), generator=g), "labels": torch.randint(5, 40, (8, 6), generator=g)}
        for _ in range(4)
    ]
    bp = compute_blueprint(model, {"a": batches}, model_path=tmp_path, tokenizer=None,
                           loss_fn=lambda m, b: m(**b).loss)
    assert bf.check_binding(bp, bf.model_tensors(tmp_path)) == []
    assert bp.model.structure_digest == bf.structure_digest(bf.model_tensors(tmp_path))
    assert bf.validate(bp) == []


def test_fsdp_is_refused(tiny_net: TinyNet) -> None:
    class FullyShardedDataParallel(nn.Module):  # stands in for the real wrapper by name
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.module = inner

    with pytest.raises(ComputeError) as info:
        compute_blueprint(FullyShardedDataParallel(tiny_net), {"a": tiny_batches(1, 5)}, tiny_loss)
    assert "FSDP" in str(info.value)


def test_score_sidecar_is_written_and_bound_by_digest(tiny_net: TinyNet, tmp_path: Path) -> None:
    import hashlib

    from safetensors import safe_open

    side = tmp_path / "bp.scores.safetensors"
    bp = compute_blueprint(tiny_net, {"a": tiny_batches(1, 5)}, tiny_loss, sidecar=side, sidecar_granularity="row")
    assert bf.validate(bp) == []
    assert bp.sidecars is not None and bp.sidecars[0].path == side.name
    assert bp.sidecars[0].digest == "sha256:" + hashlib.sha256(side.read_bytes()).hexdigest()
    with safe_open(str(side), framework="pt") as fh:
        assert fh.metadata()["granularity"] == "row"
        assert set(fh.keys()) == {n for m in module_layout(tiny_net).modules for n in m.tensor_names}
        assert tuple(fh.get_tensor("l1.weight").shape) == (16,)
        # Per module the row scores sum to the domain weight (1 here): they are normalised shares.
        total = sum(float(fh.get_tensor(k).sum()) for k in ("l1.weight", "l1.bias"))
    assert abs(total - 1.0) < 1e-5


def test_empty_domain(tiny_net: TinyNet) -> None:
    with pytest.raises(ComputeInputError) as info:
        compute_blueprint(tiny_net, {"a": tiny_batches(1, 5), "b": []}, tiny_loss)
    assert info.value.code == "empty-domain" and "'b'" in str(info.value)


def test_bad_domain_name(tiny_net: TinyNet) -> None:
    with pytest.raises(ComputeInputError) as info:
        compute_blueprint(tiny_net, {"no spaces": tiny_batches(1, 5)}, tiny_loss)
    assert info.value.code == "bad-name"
