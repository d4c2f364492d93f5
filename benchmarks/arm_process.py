"""Run one benchmark arm in a fresh Python process: its own peak memory, its own thread count.

The arm is the calling script run again with `--arm SPEC` (SPEC: the arm's settings as JSON); it
prints its result as JSON on its last stdout line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_arm(script: str | Path, spec: dict[str, Any], label: str) -> dict[str, Any]:
    """`script --arm SPEC` with OMP_NUM_THREADS = spec["threads"]; its JSON result, plus the
    process's wall time as `process_s`. A failed arm raises RuntimeError with its stderr's tail."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(spec["threads"])}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script), "--arm", json.dumps(spec)], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"arm {label} failed:\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t0
    return out
