"""torchrun --standalone --nproc_per_node=2 (gloo, CPU) gives the single-process blueprint: a plain
process group, DDP, and FSDP2 (`fully_shard`), whose statistics are assembled from gradient shards."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import blueprint_format as bf
from reference_impl import ComputeConfig, compute_blueprint
from reference_impl.losses import causal_lm_loss
from tests.compute.conftest import (
    TinyNet,
    merge_pairs,
    tiny_batches,
    tiny_llama,
    tiny_loss,
    unpadded_token_batches,
)

CREATED = "2026-01-01T00:00:00Z"
ROOT = Path(__file__).resolve().parents[2]


def _compare(a: bf.Blueprint, b: bf.Blueprint) -> None:
    assert [m.name for m in a.modules] == [m.name for m in b.modules]
    for ma, mb in zip(a.modules, b.modules):
        for d in a.domain_names:
            for key in ("grad_norm_mean", "grad_norm_median", "grad_norm_sq_mean", "mean_grad_norm"):
                assert getattr(ma.stats[d], key) == pytest.approx(getattr(mb.stats[d], key), rel=1e-5), (ma.name, d, key)
            assert ma.stats[d].rank == mb.stats[d].rank
        assert ma.combined is not None and mb.combined is not None
        assert ma.combined.score == pytest.approx(mb.combined.score, rel=1e-5)
        assert (ma.k_star is None) == (mb.k_star is None)
        if ma.k_star is not None:
            assert ma.k_star == pytest.approx(mb.k_star, rel=1e-3)  # type: ignore[arg-type]
    for da, db in zip(a.domains, b.domains):
        assert (da.examples, da.batches) == (db.examples, db.batches)
        assert da.element_mass_shares is not None and db.element_mass_shares is not None
        assert [s for _, s in da.element_mass_shares.as_pairs()] == pytest.approx(
            [s for _, s in db.element_mass_shares.as_pairs()], rel=1e-5
        )


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_processes_match_one(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun is not None
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", str(Path(__file__).with_name("dist_worker.py")), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    multi = bf.load(tmp_path / "plain.json")
    assert multi.method.world_size == 2

    torch.manual_seed(0)
    single = compute_blueprint(
        TinyNet(), {"alpha": tiny_batches(1, 7), "beta": tiny_batches(2, 6)}, tiny_loss, created=CREATED, device="cpu"
    )
    assert single.method.world_size == 1
    _compare(multi, single)

    # DDP: every step averages the two processes' batches; one process on the merged batches agrees.
    ddp = bf.load(tmp_path / "ddp.json")
    torch.manual_seed(0)
    small = ComputeConfig(created=CREATED, device="cpu", min_examples_per_aggregate=16)
    ref = compute_blueprint(TinyNet(), {"alpha": merge_pairs(tiny_batches(1, 8, size=4))}, tiny_loss, small)
    _compare(ddp, ref)

    # FSDP2: each process holds shards; module norms come from summed squared shard norms.
    torch.manual_seed(0)
    merged = {"alpha": merge_pairs(tiny_batches(1, 8, size=4)), "beta": merge_pairs(tiny_batches(2, 8, size=4))}
    fsdp_tiny = bf.load(tmp_path / "fsdp_tiny.json")
    assert fsdp_tiny.method.world_size == 2
    _compare(fsdp_tiny, compute_blueprint(TinyNet(), merged, tiny_loss, small))
    llama_data = {
        "chat": merge_pairs(unpadded_token_batches(5, 8)), "code": merge_pairs(unpadded_token_batches(6, 8)),
    }
    row = ComputeConfig(created=CREATED, device="cpu", min_examples_per_aggregate=8, granularity="row")
    fsdp_llama = bf.load(tmp_path / "fsdp_llama.json")
    _compare(fsdp_llama, compute_blueprint(tiny_llama(), llama_data, causal_lm_loss, row))
    assert "lm_head" not in [m.name for m in fsdp_llama.modules]  # tied: described once, as the embedding


@pytest.mark.slow
@pytest.mark.distributed
def test_cli_distributed_fsdp_matches_one_process(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 blueprint compute ... --distributed fsdp` (the README's launch)
    equals one process whose batches are the union of the two processes' batches."""
    from blueprint_format.cli import main
    from tests.compute.hf_folders import make_folder
    from tests.data_selection.folders import WORDS

    folder = make_folder(tmp_path / "cls", "cls")
    # Six one-token words per example: no padding, so both runs pad (not at all) alike.
    rng = random.Random(0)
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(
        json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(6)), "label": "pos" if i % 2 else "neg"}) + "\n"
        for i in range(32)
    ), encoding="utf-8")
    common = ["compute", "--model", str(folder), "--data", f"reviews={data}", "--min-examples", "8", "--quiet",
              "--device", "cpu", "--granularity", "row"]
    blueprint = Path(sys.executable).with_name("blueprint")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun is not None
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", str(blueprint), *common, "--batch-size", "4",
         "-o", str(tmp_path / "fsdp.json"), "--distributed", "fsdp"],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert main([*common, "--batch-size", "8", "-o", str(tmp_path / "one.json")]) == 0
    multi, single = bf.load(tmp_path / "fsdp.json"), bf.load(tmp_path / "one.json")
    assert multi.method.world_size == 2 and single.method.world_size == 1
    _compare(multi, single)
    assert bf.check_binding(multi, bf.model_tensors(folder)) == []


def test_cli_distributed_needs_torchrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from blueprint_format.cli import main

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "d.txt").write_text("x\n", encoding="utf-8")
    code = main(["compute", "--model", str(tmp_path), "--data", f"d={tmp_path / 'd.txt'}", "-o",
                 str(tmp_path / "bp.json"), "--distributed", "fsdp"])
    assert code == 2


@pytest.mark.slow
@pytest.mark.distributed
def test_cli_select_data_distributed_fsdp_matches_one_process(tmp_path: Path) -> None:
    """`torchrun ... select-data --distributed fsdp`: each process scores every other batch of
    the FSDP-sharded model; the gathered scores equal one process's, in input order."""
    from blueprint_format.cli import main
    from reference_impl.data_selection import read_scores
    from tests.compute.hf_folders import make_folder
    from tests.data_selection.folders import write_jsonl

    folder = make_folder(tmp_path / "cls", "cls")
    data = write_jsonl(tmp_path / "pool.jsonl", 22)  # 6 batches of 4: the last one short
    common = ["select-data", "--model", str(folder), "--data", str(data), "--fraction", "0.5", "--batch-size", "4",
              "--quiet", "--device", "cpu"]
    blueprint = Path(sys.executable).with_name("blueprint")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun is not None
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", str(blueprint), *common, "-o", str(tmp_path / "multi.jsonl"),
         "--scores", str(tmp_path / "multi.scores.jsonl"), "--distributed", "fsdp"],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert main([*common, "-o", str(tmp_path / "one.jsonl"), "--scores", str(tmp_path / "one.scores.jsonl")]) == 0
    multi, one = read_scores(tmp_path / "multi.scores.jsonl"), read_scores(tmp_path / "one.scores.jsonl")
    assert len(multi) == len(one) == 22
    assert multi == pytest.approx(one, rel=1e-5)
    assert (tmp_path / "multi.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
