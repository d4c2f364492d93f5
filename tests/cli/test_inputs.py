"""select-data refuses what it cannot read safely before opening it: a FIFO as --data or
--from-scores would block forever (issue 10, item 9); hostile JSONL gets a code (item 13)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blueprint_format.cli import main
from tests.compute.hf_folders import make_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("model") / "gpt2", "gpt2")


def _select(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["select-data", "--fraction", "0.5", *args])
    return code, capsys.readouterr().err


def test_fifo_data_is_refused(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "pool.txt"
    os.mkfifo(fifo)
    code, err = _select(capsys, "--model", str(folder), "--data", str(fifo), "-o", str(tmp_path / "out.txt"))
    assert code == 2 and err.startswith("error: not-a-regular-file") and "FIFO" in err, err


def test_fifo_scores_are_refused(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "pool.txt"
    data.write_text("one line\nanother line\n")
    fifo = tmp_path / "scores.jsonl"
    os.mkfifo(fifo)
    code, err = _select(capsys, "--model", str(folder), "--data", str(data), "--from-scores", str(fifo),
                        "-o", str(tmp_path / "out.txt"))
    assert code == 2 and err.startswith("error: not-a-regular-file"), err


def test_deeply_nested_pool_is_refused(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "pool.jsonl"
    data.write_text('{"text": "a"}\n{"text": "b", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    code, err = _select(capsys, "--model", str(folder), "--data", str(data), "-o", str(tmp_path / "out.txt"))
    assert code == 1 and err.startswith("error: too-deep") and "line 2" in err, err
    assert "Traceback" not in err and not (tmp_path / "out.txt").exists()
