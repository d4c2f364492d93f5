"""Distributed pieces of the computation: FSDP2 detection and wrapping, and the reductions that
combine per-process partial statistics.

Under FSDP2 (`torch.distributed.fsdp.fully_shard`) every parameter is a DTensor sharded on its
first dimension, and after each backward every process holds its shard of the gradient averaged
over all processes (a batch is then the union of the processes' local batches, as under DDP).
Statistics are assembled from the shards without gathering any gradient:

* a module's squared gradient norm is the sum over processes of the squared norms of its local
  shards (`all_reduce` SUM of one small (batches x modules) matrix per domain);
* element-level histograms (element shares, sketched gain curves) are merged by summing their
  bin counts and masses, with bin edges from the global largest value (`all_reduce` MAX);
* exact per-element quantities (only below `collector.EXACT_ELEMENT_LIMIT` elements in total)
  are gathered as values, since their order does not matter.

FSDP1 (`FullyShardedDataParallel`, flattened parameters that cross module boundaries) stays
refused: its shards do not map back to parameters.

The commands take `--distributed fsdp` under torchrun (`process_group` joins the group torchrun
set up; `shard_model` applies FSDP2 to a loaded model), for example:

    torchrun --nproc_per_node 2 $(which blueprint) compute --model FOLDER --data d=d.txt -o bp.json \
        --distributed fsdp
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

#: Environment variables torchrun sets for every process it starts.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher setting its variables)."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def local_device(device: str) -> torch.device:
    """This process's device under torchrun: cuda:LOCAL_RANK for "cuda" (or "auto" with CUDA),
    else the CPU."""
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")


@contextlib.contextmanager
def process_group(device: str) -> Iterator[torch.device]:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on the CPU) for the
    duration; yields this process's device (`device`: "auto", "cpu" or "cuda")."""
    dev = local_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    joined = not (dist.is_available() and dist.is_initialized())
    if joined:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        yield dev
    finally:
        if joined:
            dist.destroy_process_group()


def session(kind: str | None, device: str) -> contextlib.AbstractContextManager[torch.device | None]:
    """The commands' --distributed: for "fsdp", `process_group(device)` (yields this process's
    device); for None, a context yielding None."""
    return process_group(device) if kind is not None else contextlib.nullcontext(None)


def is_main_process() -> bool:
    """Rank 0, or not distributed: the process that writes outputs and prints."""
    return distributed()[1] == 0


def distributed() -> tuple[bool, int, int]:
    """(initialised, rank, world size) of the default process group."""
    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


def is_dtensor(t: Any) -> bool:
    """True for a torch DTensor (a sharded parameter or gradient)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed support
        return False
    return isinstance(t, DTensor)


def is_fsdp1(model: nn.Module) -> bool:
    """A model wrapped in FSDP1's FullyShardedDataParallel (flattened parameters)."""
    return any("FullyShardedDataParallel" in type(m).__name__ for m in model.modules())


def is_fsdp2(model: nn.Module) -> bool:
    """A model sharded with FSDP2's fully_shard (its parameters are DTensors)."""
    return any(is_dtensor(p) for p in model.parameters())


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor: the local shard of a DTensor, else the tensor itself."""
    return t.to_local() if is_dtensor(t) else t  # type: ignore[attr-defined]


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all_reduce over the default group (no-op without one); returns `t`."""
    on, _, world = distributed()
    if on and world > 1:
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t


def gather_values(t: torch.Tensor) -> torch.Tensor:
    """Every process's 1-D `t` concatenated in rank order (lengths may differ)."""
    on, _, world = distributed()
    if not on or world == 1:
        return t
    n = torch.tensor([t.numel()], dtype=torch.long, device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    longest = int(max(int(s.item()) for s in sizes))
    padded = torch.zeros(longest, dtype=t.dtype, device=t.device)
    padded[: t.numel()] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Apply FSDP2 to a model: each repeated block (a Hugging Face decoder/encoder layer) is one
    FSDP unit, then the root (embeddings, head, the rest). Scalar parameters, which fully_shard
    cannot shard, stay replicated (the collector averages their gradients itself). Needs an
    initialised process group; returns the same model object."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    _, _, world = distributed()
    mesh = init_device_mesh(device.type, (world,))
    model.to(device)
    scalars = {p for p in model.parameters() if p.dim() == 0}
    for layers in _layer_lists(model):
        for layer in layers:
            fully_shard(layer, mesh=mesh, ignored_params=scalars or None)
    fully_shard(model, mesh=mesh, ignored_params=scalars or None)
    return model


def _layer_lists(model: nn.Module) -> list[nn.ModuleList]:
    """The model's repeated blocks: every ModuleList of at least two modules of one type that
    is not inside another such list."""
    out: list[nn.ModuleList] = []
    inside: set[int] = set()
    for mod in model.modules():
        if id(mod) in inside:
            continue
        if isinstance(mod, nn.ModuleList) and len(mod) >= 2 and len({type(m) for m in mod}) == 1:
            out.append(mod)
            inside.update(id(m) for m in mod.modules())
    return out
