"""Worker for test_distributed.py, launched by torchrun with 2 processes on CPU (gloo).

Writes, from rank 0: OUT/plain.json (plain process group: each process takes every other batch)
and OUT/ddp.json (the model wrapped in DistributedDataParallel: gradients averaged across processes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import blueprint_format as bf
from reference_impl import compute_blueprint
from tests.compute.conftest import TinyNet, tiny_batches, tiny_loss

CREATED = "2026-01-01T00:00:00Z"


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    data = {"alpha": tiny_batches(1, 7), "beta": tiny_batches(2, 6)}
    bp = compute_blueprint(TinyNet(), data, tiny_loss, created=CREATED, device="cpu")
    torch.manual_seed(0)
    ddp = DistributedDataParallel(TinyNet())
    bp_ddp = compute_blueprint(ddp, {"alpha": tiny_batches(1, 8, size=4)}, tiny_loss, created=CREATED,
                               device="cpu", min_examples_per_aggregate=16)
    if dist.get_rank() == 0:
        bf.dump(bp, out / "plain.json")
        bf.dump(bp_ddp, out / "ddp.json")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
