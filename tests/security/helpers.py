"""Helpers for the hostile-input tests: the real CLI in a subprocess, and its peak memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The long run (SECURITY.md): every densest document under the limits, not only a representative few.
LONG = os.environ.get("BLUEPRINT_LONG_TESTS") == "1"

# Runs the CLI in-process and reports the process's peak resident memory (VmHWM: reset by exec,
# unlike ru_maxrss, which would report the forking test process's size).
_MEASURED = """
import sys
from blueprint_format.cli import main
status = main(sys.argv[1:])
peak = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
sys.stderr.write("PEAK_KB=" + peak.split()[1] + "\\n")
sys.exit(status)
"""


@dataclass
class Run:
    """What one CLI run did."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_bytes: int | None = None


def run_cli(*args: str, stdin: str | None = None, timeout: float = 120, measure: bool = False) -> Run:
    """`blueprint ARGS...` in a fresh interpreter (offline), with its exit status and output."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-c", _MEASURED] if measure else [sys.executable, "-m", "blueprint_format"]
    started = time.perf_counter()
    proc = subprocess.run(
        [*command, *args], input=stdin, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )
    seconds = time.perf_counter() - started
    peak = None
    stderr = proc.stderr
    if measure:
        lines = stderr.splitlines()
        peak = next((int(x.split("=")[1]) * 1024 for x in lines if x.startswith("PEAK_KB=")), None)
        stderr = "\n".join(x for x in lines if not x.startswith("PEAK_KB="))
    return Run(proc.returncode, proc.stdout, stderr, seconds, peak)


def one_line_error(run: Run, code: str) -> None:
    """The run failed with exactly `code`, on error lines, and printed no traceback."""
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout, run.stderr
    assert code in run.stderr or code in run.stdout, (run.stdout, run.stderr)


# Runs several CLI commands in one interpreter (one start-up instead of one per command), each with
# its own captured stdout and stderr (byte streams, as the CLI writes canonical bytes to them).
_BATCH = """
import contextlib, io, json, sys
from blueprint_format.cli import main
results = []
for args in json.loads(sys.argv[1]):
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(args)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 2
    out.flush()
    err.flush()
    results.append([status, out.buffer.getvalue().decode(), err.buffer.getvalue().decode()])
sys.__stdout__.write(json.dumps(results))
"""


def run_batch(*commands: list[str], timeout: float = 120) -> list[Run]:
    """`blueprint ARGS...` for each command, in one fresh interpreter (offline); a command that
    blocks (a reader opening a FIFO) makes the whole batch time out, which fails the test."""
    import json

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _BATCH, json.dumps([list(c) for c in commands])],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    seconds = (time.perf_counter() - started) / max(len(commands), 1)
    return [Run(status, out, err, seconds) for status, out, err in json.loads(proc.stdout)]
