"""Calibration data files: parsing, selection and the contrastive CLI path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import blueprint_format as bf
from blueprint_format.cli import main
from blueprint_format.errors import UsageError
from reference_impl import ComputeInputError
from reference_impl.data import Example, parse_data_arg, read_examples, select_examples
from tests.compute.hf_folders import make_folder


def test_parse_data_arg(tmp_path: Path) -> None:
    assert parse_data_arg("news=/x/a.txt") == ("news", Path("/x/a.txt"))
    assert parse_data_arg("/x/chat.v2.txt") == ("chat.v2", Path("/x/chat.v2.txt"))
    with pytest.raises(UsageError) as info:  # the flag's value is at fault: usage-error at --data
        parse_data_arg("/x/has space.txt")
    assert info.value.code == "usage-error" and info.value.issues[0].path == "--data"


def test_read_jsonl_and_txt(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": "pos", "pair": "c"}\n', encoding="utf-8")
    assert read_examples(p) == [Example("a", 1), Example("b", "pos", "c")]
    assert read_examples(p)[1].fingerprint_text == "b\tc"
    t = tmp_path / "d.txt"
    t.write_bytes(b"\xef\xbb\xbfone\r\ntwo\n   \nthree")
    assert [e.text for e in read_examples(t)] == ["one", "two", "three"]
    bad = tmp_path / "d.csv"
    bad.write_text("x", encoding="utf-8")
    with pytest.raises(ComputeInputError):
        read_examples(bad)
    wrong = tmp_path / "w.jsonl"
    wrong.write_text('{"text": "a", "label": true}\n', encoding="utf-8")
    with pytest.raises(ComputeInputError) as info:
        read_examples(wrong)
    assert info.value.code == "wrong-type" and "line 1" in str(info.value)


def test_select_examples_is_seeded() -> None:
    ex = [Example(str(i)) for i in range(100)]
    assert select_examples(ex, 8, 3, False, 0) == ex[:24]
    a = select_examples(ex, 8, None, True, 1)
    assert a == select_examples(ex, 8, None, True, 1) and a != ex and sorted(a, key=lambda e: int(e.text)) == ex
    assert a != select_examples(ex, 8, None, True, 2)


@pytest.mark.slow
def test_contrastive_pairs_on_a_base_encoder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_folder(tmp_path / "bert", "bert")
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "\n".join(json.dumps({"text": f"question {i} about cats", "pair": f"answer {i} on dogs"}) for i in range(40)),
        encoding="utf-8",
    )
    out = tmp_path / "bp.json"
    # A bare encoder has no loss of its own: the user must choose one.
    assert main(["compute", "--model", str(folder), "--data", str(data), "-o", str(out), "--quiet"]) == 2
    assert "--loss" in capsys.readouterr().err and not out.exists()
    rc = main(["compute", "--model", str(folder), "--data", str(data), "-o", str(out), "--quiet", "--loss",
               "contrastive", "--shuffle", "--seed", "5"])
    assert rc == 0, capsys.readouterr().err
    bp = bf.load(out)
    assert bp.method.loss.startswith("contrastive")
    assert bf.check_binding(bp, bf.model_tensors(folder)) == []
    assert "pooler.dense" not in [m.name for m in bp.modules]  # unused by mean pooling: unreached
    shutil.rmtree(folder)
