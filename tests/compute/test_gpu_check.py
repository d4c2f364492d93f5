"""benchmarks/gpu_check.sh --dry-run: the GPU check's CPU rehearsal runs its steps and writes its
one results file (the same script runs on the GPU machine without --dry-run). The `tests` step
(`pytest -m cuda`) is left out here: make test runs those tests itself (they skip on the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_one_results_file(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out),
         "--steps", "compute,finetune,ghost_norms"],
        env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT,
    )
    report = json.loads(out.read_text())
    failed = {k: v.get("output_tail", "")[-1500:] for k, v in report["steps"].items() if v["status"] != "ok"}
    assert proc.returncode == 0 and not failed, (proc.stderr[-2000:], failed)
    assert report["dry_run"] and report["device"] == "cpu"
    assert list(report["steps"]) == ["compute", "finetune", "ghost_norms"]
    compute = report["steps"]["compute"]["result"]
    assert compute["bf16_blueprint_valid"] and compute["bf16"]["dtype"] == "bf16"
    assert compute["bf16_vs_fp32"]["modules"] == compute["fp32"]["modules"] > 0
    arms = {row["name"] for row in report["steps"]["finetune"]["result"]["results"]}
    assert "blueprint element" in arms
    ghost = report["steps"]["ghost_norms"]["result"]
    assert ghost["device"] == "cpu" and ghost["max_relative_difference_ghost_vs_loop"] < 1e-3
    # The benchmarks ran in a scratch copy: nothing was written into the repository's results.
    assert not (ROOT / "benchmarks" / "results" / "ghost_norms_check.json").exists()
