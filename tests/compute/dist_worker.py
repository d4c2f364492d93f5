"""Worker for test_distributed.py, launched by torchrun with 2 processes on CPU (gloo).

Writes, from rank 0:
* OUT/plain.json: plain process group, each process takes every other batch;
* OUT/ddp.json: the model wrapped in DistributedDataParallel (gradients averaged across processes);
* OUT/fsdp_tiny.json and OUT/fsdp_llama.json: the model sharded with FSDP2 (`fully_shard`, via
  reference_impl.sharded.shard_model): TinyNet (its scalar parameter stays replicated) and a tiny
  Llama with RMSNorm and tied input/output embeddings, as SmolLM2 has.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import blueprint_format as bf
from reference_impl import ComputeConfig, compute_blueprint
from reference_impl.losses import causal_lm_loss
from reference_impl.sharded import shard_model
from tests.compute.conftest import TinyNet, tiny_batches, tiny_llama, tiny_loss, unpadded_token_batches

CREATED = "2026-01-01T00:00:00Z"
CPU = torch.device("cpu")


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    data = {"alpha": tiny_batches(1, 7), "beta": tiny_batches(2, 6)}
    results = {"plain": compute_blueprint(TinyNet(), data, tiny_loss, created=CREATED, device="cpu")}
    torch.manual_seed(0)
    ddp = DistributedDataParallel(TinyNet())
    small = ComputeConfig(created=CREATED, device="cpu", min_examples_per_aggregate=16)
    results["ddp"] = compute_blueprint(ddp, {"alpha": tiny_batches(1, 8, size=4)}, tiny_loss, small)
    torch.manual_seed(0)
    tiny = shard_model(TinyNet(), CPU)
    fsdp_data = {"alpha": tiny_batches(1, 8, size=4), "beta": tiny_batches(2, 8, size=4)}
    results["fsdp_tiny"] = compute_blueprint(tiny, fsdp_data, tiny_loss, small)
    llama = shard_model(tiny_llama(), CPU)
    llama_data = {"chat": unpadded_token_batches(5, 8), "code": unpadded_token_batches(6, 8)}
    row = ComputeConfig(created=CREATED, device="cpu", min_examples_per_aggregate=8, granularity="row")
    results["fsdp_llama"] = compute_blueprint(llama, llama_data, causal_lm_loss, row)
    if dist.get_rank() == 0:
        for name, bp in results.items():
            bf.dump(bp, out / f"{name}.json")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
