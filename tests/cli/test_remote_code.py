"""A model folder's own Python code never runs, and nobody is asked on stdin, unless the user
passes --trust-remote-code (issue 10, item 1).

The folder is real: a working GPT-2 folder whose config.json maps AutoConfig and
AutoModelForCausalLM to Python files in the folder (`auto_map`) under a model type transformers
does not know, so that transformers can only load it by running that code. The code writes a
marker file when it runs. Without the flag, with "y" on stdin, the marker must never appear.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blueprint_format.cli import main
from reference_impl.model_loading import refuse_remote_code
from tests.compute.hf_folders import make_folder

CONFIG_CODE = '''from pathlib import Path
Path({marker!r}).write_text("the folder's code ran")
from transformers import GPT2Config


class EvilConfig(GPT2Config):
    model_type = "evil-gpt2"
'''
MODEL_CODE = '''from pathlib import Path
Path({marker!r}).write_text("the folder's code ran")
from transformers import GPT2LMHeadModel

from .configuration_evil import EvilConfig


class EvilModel(GPT2LMHeadModel):
    config_class = EvilConfig
'''


def _code_folder(root: Path) -> tuple[Path, Path]:
    """(model folder whose config names its own code, the marker that code writes)."""
    folder = make_folder(root / "model", "gpt2")
    marker = root / "marker.txt"
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evil-gpt2"
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_evil.py").write_text(CONFIG_CODE.format(marker=str(marker)))
    (folder / "modeling_evil.py").write_text(MODEL_CODE.format(marker=str(marker)))
    return folder, marker


def _data(root: Path) -> Path:
    data = root / "pool.txt"
    data.write_text("\n".join(f"the cat number {i} sat on the mat" for i in range(40)) + "\n")
    return data


def _run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(root / "modules"))
    return subprocess.run([sys.executable, "-m", "blueprint_format", *args], input="y\ny\n", capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.mark.slow
def test_compute_refuses_the_folders_code_even_with_yes_on_stdin(tmp_path: Path) -> None:
    folder, marker = _code_folder(tmp_path)
    out = tmp_path / "bp.json"
    proc = _run(tmp_path, "compute", "--model", str(folder), "--data", str(_data(tmp_path)), "-o", str(out))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: untrusted-code at /: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "--trust-remote-code" in proc.stderr
    assert "[y/N]" not in proc.stdout + proc.stderr  # never a prompt
    assert not marker.exists() and not out.exists()


def test_select_data_refuses_the_folders_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import io

    folder, marker = _code_folder(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\n"))
    out = tmp_path / "selected.txt"
    code = main(["select-data", "--model", str(folder), "--data", str(_data(tmp_path)), "--fraction", "0.5",
                 "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "error: untrusted-code" in err, err
    assert not marker.exists() and not out.exists()


def test_tokenizer_code_is_refused_too(tmp_path: Path) -> None:
    """`auto_map` in tokenizer_config.json names code AutoTokenizer would run."""
    from reference_impl import ComputeInputError

    folder = make_folder(tmp_path / "model", "gpt2")
    refuse_remote_code(folder)  # a plain folder passes
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    with pytest.raises(ComputeInputError) as info:
        refuse_remote_code(folder)
    assert info.value.code == "untrusted-code" and "tokenizer_config.json" in str(info.value)
    refuse_remote_code(folder, trust_remote_code=True)


@pytest.mark.slow
def test_trust_remote_code_runs_it(tmp_path: Path) -> None:
    """The folder's code is real and the flag works: with --trust-remote-code it runs."""
    folder, marker = _code_folder(tmp_path)
    out = tmp_path / "bp.json"
    proc = _run(tmp_path, "compute", "--model", str(folder), "--data", str(_data(tmp_path)), "-o", str(out),
                "--trust-remote-code", "--quiet", "--granularity", "module", "--batch-size", "20")
    assert proc.returncode == 0, proc.stderr
    assert marker.read_text() == "the folder's code ran" and out.exists()
