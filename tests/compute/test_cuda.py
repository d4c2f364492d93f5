"""On a CUDA device: compute and ghost norms agree with the CPU (skipped without a device).

benchmarks/gpu_check.sh runs these (`pytest -m cuda`) on the GPU machine.
"""

from __future__ import annotations

import pytest
import torch

import blueprint_format as bf
from reference_impl import ComputeConfig, compute_blueprint
from reference_impl.ghost_norms import causal_lm_per_example_loss, per_example_grad_norms
from reference_impl.losses import causal_lm_loss
from tests.compute.conftest import tiny_llama, unpadded_token_batches

pytestmark = pytest.mark.cuda
CREATED = "2026-01-01T00:00:00Z"


def _cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device("cuda")


def _stats(bp: bf.Blueprint) -> list[float]:
    return [getattr(m.stats[d], k) for m in bp.modules for d in bp.domain_names
            for k in ("grad_norm_mean", "grad_norm_median", "grad_norm_sq_mean", "mean_grad_norm")]


def test_compute_on_cuda_matches_cpu() -> None:
    device = _cuda()
    data = {"chat": unpadded_token_batches(5, 6), "code": unpadded_token_batches(6, 6)}
    config = ComputeConfig(created=CREATED, min_examples_per_aggregate=8, granularity="row")
    cpu = compute_blueprint(tiny_llama(), data, causal_lm_loss, config, device="cpu")
    gpu = compute_blueprint(tiny_llama(), data, causal_lm_loss, config, device=device)
    assert bf.validate(gpu) == []
    assert gpu.method.device_kind is not None and gpu.method.device_kind.startswith("cuda")
    assert _stats(gpu) == pytest.approx(_stats(cpu), rel=1e-4)


def test_compute_bf16_weights_on_cuda() -> None:
    """bf16 weights, fp32 accumulation: statistics within bf16's precision of fp32's."""
    device = _cuda()
    data = {"chat": unpadded_token_batches(5, 6)}
    config = ComputeConfig(created=CREATED, min_examples_per_aggregate=8, device=device)
    ref = compute_blueprint(tiny_llama(), data, causal_lm_loss, config)
    low = compute_blueprint(tiny_llama().to(torch.bfloat16), data, causal_lm_loss, config)
    assert low.method.precision == "bf16"
    assert bf.validate(low) == []
    assert _stats(low) == pytest.approx(_stats(ref), rel=0.1)


def test_ghost_norms_on_cuda_match_cpu() -> None:
    device = _cuda()
    model = tiny_llama().eval()
    batch = unpadded_token_batches(7, 1, size=4)[0]
    cpu = per_example_grad_norms(model, batch, causal_lm_per_example_loss)
    gpu = per_example_grad_norms(model.to(device), {k: v.to(device) for k, v in batch.items()},
                                 causal_lm_per_example_loss)
    assert not gpu.unsupported
    torch.testing.assert_close(gpu.sq_norms.cpu(), cpu.sq_norms, rtol=1e-4, atol=1e-8)
