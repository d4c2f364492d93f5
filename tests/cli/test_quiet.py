"""`--quiet` means quiet: with it, a successful run prints nothing at all, third-party output
(transformers' load report and "Loading weights" bar, its warnings, tqdm bars) included.

Run as subprocesses, so that whatever reaches the real stdout and stderr is seen. The compute
case also runs without --quiet once, to prove there was output to silence.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.compute.hf_folders import make_folder

pytestmark = pytest.mark.slow


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("TRANSFORMERS_VERBOSITY", None)
    return subprocess.run([sys.executable, "-m", "blueprint_format", *args], capture_output=True, text=True,
                          env=env, timeout=600, stdin=subprocess.DEVNULL)


def _labelled(path: Path, n: int) -> Path:
    path.write_text("\n".join(json.dumps({"text": f"message {i} about the weather today", "label": i % 2})
                              for i in range(n)) + "\n")
    return path


def test_compute_quiet_silences_transformers(tmp_path: Path) -> None:
    """A bare BertModel folder loaded for sequence classification: transformers reports the
    freshly initialised head and shows a loading bar, unless --quiet."""
    data = _labelled(tmp_path / "pool.jsonl", 32)
    folder = make_folder(tmp_path / "bert", "bert")
    args = ["compute", "--model", str(folder), "--data", str(data), "--loss", "sequence-classification",
            "--granularity", "module", "--batch-size", "32", "--seq-len", "16"]
    loud = _run(*args, "-o", str(tmp_path / "loud.json"))
    assert loud.returncode == 0, loud.stderr
    assert "LOAD REPORT" in loud.stderr and "wrote" in loud.stderr
    quiet = _run(*args, "-o", str(tmp_path / "quiet.json"), "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert (quiet.stdout, quiet.stderr) == ("", "")
    assert (tmp_path / "quiet.json").exists()


def test_select_data_quiet(tmp_path: Path) -> None:
    """Scoring loads the model through the same loader (its bar and warnings are the ones the
    compute case shows without --quiet) and reports truncated examples: all silenced."""
    folder = make_folder(tmp_path / "gpt2", "gpt2")
    data = tmp_path / "pool.txt"
    data.write_text("\n".join(f"line {i} of the pool " + "word " * (i % 90) for i in range(24)) + "\n")
    out = tmp_path / "quiet.txt"
    quiet = _run("select-data", "--model", str(folder), "--data", str(data), "--fraction", "0.5", "--seq-len", "512",
                 "--batch-size", "8", "-o", str(out), "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert (quiet.stdout, quiet.stderr) == ("", "")
    assert len(out.read_text().splitlines()) == 12
