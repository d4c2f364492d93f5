"""The README's examples run as written, so that the README cannot drift from the code.

Every fenced ```sh block (except those whose info string says `skip`) is run line by line through
the `blueprint` entry point, and every ```python block is executed, in document order, in one
folder that holds what the README's prose promises: `model/`, a Hugging Face model folder for
sequence classification, and `.jsonl` files whose lines hold a `text` and a `label`. Each
command must succeed.
"""

from __future__ import annotations

import json
import random
import re
import shlex
from pathlib import Path

import pytest

from blueprint_format.cli import main
from tests.compute.hf_folders import make_folder

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
WORDS = ("the", "a", "cell", "gene", "protein", "storm", "rain", "market", "price", "team", "goal", "film", "song",
         "read", "wrote", "big", "small")


def blocks() -> list[tuple[str, str]]:
    """(language, code) of the README's runnable blocks, in order."""
    return [(lang, code) for lang, info, code in BLOCK.findall(README.read_text(encoding="utf-8"))
            if lang in ("sh", "python") and "skip" not in info.split()]


def _jsonl(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = [json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))),
                         "label": rng.choice(["neg", "pos"])}) for _ in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    make_folder(tmp_path / "model", "cls")
    for seed, name in enumerate(("general", "bio", "train", "eval")):
        _jsonl(tmp_path / f"{name}.jsonl", 48, seed)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_has_runnable_examples() -> None:
    langs = [lang for lang, _ in blocks()]
    assert "sh" in langs and "python" in langs


@pytest.mark.slow
def test_readme_examples_run(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for lang, code in blocks():
        if lang == "python":
            exec(compile(code, str(README), "exec"), {"__name__": "readme"})  # our own README, as a reader would run it
            continue
        for line in code.splitlines():
            argv = shlex.split(line, comments=True)
            if not argv:
                continue
            assert argv[0] == "blueprint", f"README sh examples call `blueprint`: {line}"
            status = main(argv[1:])
            assert status == 0, f"{line}\n{capsys.readouterr().err}"
