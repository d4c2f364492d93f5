"""`blueprint compute` end to end on tiny model folders, and every kind of bad input."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch

import blueprint_format as bf
from blueprint_format.cli import main
from tests.compute.hf_folders import make_folder

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "fast", "slow", "big", "small", "red", "blue", "green", "tree", "house"]


def _lines(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {k: make_folder(root / k, k) for k in ("gpt2", "mlm", "cls")}


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    a = tmp_path / "news.txt"
    a.write_text("\n".join(_lines(1, 40)) + "\n\n", encoding="utf-8")
    b = tmp_path / "chat.txt"
    b.write_text("\n".join(_lines(2, 48)), encoding="utf-8")
    c = tmp_path / "labelled.jsonl"
    rng = random.Random(3)
    c.write_text("\n".join(json.dumps({"text": t, "label": rng.choice(["neg", "pos", 1])}) for t in _lines(4, 40)),
                 encoding="utf-8")
    return {"a": a, "b": b, "c": c}


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["compute", *args])
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_causal_lm_two_domains(folders: dict[str, Path], data: dict[str, Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bp.json"
    code, err = _run(capsys, "--model", str(folders["gpt2"]), "--data", str(data["a"]), "--data", f"dialog={data['b']}",
                     "-o", str(out), "--batch-size", "8", "--seq-len", "16", "--seed", "3")
    assert code == 0, err
    assert "batch" in err and "wrote" in err  # progress bar and summary on stderr
    bp = bf.load(out)
    assert bf.check_binding(bp, bf.model_tensors(folders["gpt2"])) == []
    assert bp.domain_names == ["news", "dialog"]
    assert bp.method.loss.startswith("causal-lm") and bp.method.batch_size == 8 and bp.method.seq_len == 16
    assert bp.method.seed == 3 and bp.method.device_kind == "cpu" and bp.method.precision == "fp32"
    news = bp.domain("news")
    assert (news.examples, news.batches) == (40, 5)
    expected = "sha256:" + hashlib.sha256("\n".join(_lines(1, 40)).encode()).hexdigest()
    assert news.data_fingerprint == expected
    assert news.tokens is not None and news.tokens > 40
    assert bp.model.revision.startswith("weights-sha256:")
    assert bp.allocation.rule.name == "global-budget"

    # Same seed, same numbers (only the creation time may differ).
    out2 = tmp_path / "bp2.json"
    code, _ = _run(capsys, "--model", str(folders["gpt2"]), "--data", str(data["a"]), "--data", f"dialog={data['b']}",
                   "-o", str(out2), "--batch-size", "8", "--seq-len", "16", "--seed", "3", "--quiet")
    one, two = bf.load(out).to_json(), bf.load(out2).to_json()
    one["provenance"].pop("created")
    two["provenance"].pop("created")
    assert one == two


@pytest.mark.slow
def test_masked_lm_and_classification(folders: dict[str, Path], data: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mlm.json"
    code, err = _run(capsys, "--model", str(folders["mlm"]), "--data", str(data["a"]), "-o", str(out), "--quiet",
                     "--max-batches", "3", "--batch-size", "16", "--rule", "marginal", "--eta", "1",
                     "--granularity", "row", "--revision", "v1", "--sidecar", "element")
    assert code == 0, err
    bp = bf.load(out)
    assert bp.method.loss.startswith("masked-lm") and bp.model.revision == "v1"
    assert (bp.domains[0].examples, bp.domains[0].batches) == (40, 3)
    assert bp.allocation.rule.name == "marginal" and bp.allocation.granularity == "row"
    assert bf.check_binding(bp, bf.model_tensors(folders["mlm"])) == []
    assert bp.sidecars is not None and bp.sidecars[0].granularity == "element"
    side = tmp_path / "mlm.scores.safetensors"
    assert bp.sidecars[0].path == side.name
    assert bp.sidecars[0].digest == "sha256:" + hashlib.sha256(side.read_bytes()).hexdigest()

    out = tmp_path / "cls.json"
    code, err = _run(capsys, "--model", str(folders["cls"]), "--data", str(data["c"]), "-o", str(out), "--quiet",
                     "--threshold", "0.5", "--granularity", "module")
    assert code == 0, err
    bp = bf.load(out)
    assert bp.method.loss.startswith("sequence-classification")
    assert bp.allocation.rule.name == "mass-threshold"
    assert any(m.name == "classifier" for m in bp.modules)


def _expect_error(capsys: pytest.CaptureFixture[str], out: Path, status: int, code: str, *args: str) -> str:
    rc, err = _run(capsys, *args, "-o", str(out))
    assert rc == status, err
    assert f"error: {code}" in err, err
    assert "Traceback" not in err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))  # no temp file left behind
    return err


def test_bad_data(folders: dict[str, Path], data: dict[str, Path], tmp_path: Path,
                  capsys: pytest.CaptureFixture[str]) -> None:
    """Refused data content exits 1 with the data's own code; nothing is written."""
    out = tmp_path / "never.json"
    model = ["--model", str(folders["gpt2"])]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    _expect_error(capsys, out, 1, "empty-document", *model, "--data", str(empty))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9 ok\n".encode() + b"na\xefve\n")
    err = _expect_error(capsys, out, 1, "not-utf8", *model, "--data", str(latin))
    assert "byte offset 11" in err and "line 2" in err
    small = tmp_path / "small.txt"
    small.write_text("\n".join(_lines(5, 10)), encoding="utf-8")
    _expect_error(capsys, out, 1, "aggregate-too-small", *model, "--data", str(small))
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a"}\n{"txt": 1}\n', encoding="utf-8")
    _expect_error(capsys, out, 1, "missing-field", *model, "--data", str(bad_json))
    # Classification without labels.
    _expect_error(capsys, out, 1, "missing-field", "--model", str(folders["cls"]), "--data", str(data["a"]))


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_hostile_jsonl_is_refused_with_a_code(folders: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Nesting 100,000 deep, an integer label beyond Python's 4,300-digit limit, a label out of
    range: one line with a code each, exit 1, no traceback (issue items 8 and 13)."""
    out = tmp_path / "never.json"
    model = ["--model", str(folders["cls"])]
    ok = [json.dumps({"text": t, "label": 1}) for t in _lines(6, 40)]
    deep = _jsonl(tmp_path / "deep.jsonl", [*ok, '{"text": "x", "label": ' + "[" * 100000 + "]" * 100000 + "}"])
    _expect_error(capsys, out, 1, "too-deep", *model, "--data", str(deep))
    huge = _jsonl(tmp_path / "huge.jsonl", [*ok, '{"text": "x", "label": 1' + "0" * 5000 + "}"])
    err = _expect_error(capsys, out, 1, "parse-error", *model, "--data", str(huge))
    assert "line 41" in err
    big = _jsonl(tmp_path / "big.jsonl", [*ok, '{"text": "x", "label": 9223372036854775808}'])
    _expect_error(capsys, out, 1, "out-of-range", *model, "--data", str(big))
    negative = _jsonl(tmp_path / "neg.jsonl", [*ok, '{"text": "x", "label": -1}'])
    _expect_error(capsys, out, 1, "out-of-range", *model, "--data", str(negative))


def test_non_regular_data_is_refused_before_opening(folders: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A FIFO given as --data would block forever if opened: refused from its file type (item 9)."""
    fifo = tmp_path / "pool.txt"
    os.mkfifo(fifo)
    out = tmp_path / "never.json"
    err = _expect_error(capsys, out, 2, "not-a-regular-file", "--model", str(folders["gpt2"]), "--data", str(fifo))
    assert "FIFO" in err
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    _expect_error(capsys, out, 2, "not-a-regular-file", "--model", str(folders["gpt2"]), "--data", str(folder))


def test_bad_model_folders(folders: dict[str, Path], data: dict[str, Path], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never.json"
    noweights = tmp_path / "noweights"
    shutil.copytree(folders["gpt2"], noweights)
    (noweights / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(1)}, noweights / "pytorch_model.bin")
    err = _expect_error(capsys, out, 1, "unreadable-model", "--model", str(noweights), "--data", str(data["a"]))
    assert "pickle" in err
    _expect_error(capsys, out, 2, "io-error", "--model", str(tmp_path / "missing"), "--data", str(data["a"]))


@pytest.mark.parametrize("architectures", [[123], "GPT2LMHeadModel", [None], {"a": 1}])
def test_malformed_architectures(architectures: object, folders: dict[str, Path], data: dict[str, Path],
                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """config.json's `architectures` not a list of strings: unreadable-model, not an AttributeError."""
    broken = tmp_path / "model"
    shutil.copytree(folders["gpt2"], broken)
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = architectures
    (broken / "config.json").write_text(json.dumps(config))
    err = _expect_error(capsys, tmp_path / "never.json", 1, "unreadable-model", "--model", str(broken),
                        "--data", str(data["a"]))
    assert "architectures" in err


@pytest.mark.slow
def test_non_finite_gradients_are_refused_and_nothing_is_written(
    folders: dict[str, Path], data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(folders["gpt2"], broken)
    weights = load_file(broken / "model.safetensors")
    weights["transformer.ln_f.weight"] = torch.full_like(weights["transformer.ln_f.weight"], float("inf"))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "bp.json"
    out.write_text("previous", encoding="utf-8")
    rc, err = _run(capsys, "--model", str(broken), "--data", str(data["a"]), "-o", str(out), "--quiet")
    assert rc == 1, err
    assert "error: non-finite" in err and "batch 0" in err
    assert out.read_text(encoding="utf-8") == "previous"  # the old file is untouched


@pytest.mark.slow
def test_embed_into_model_folder(folders: dict[str, Path], data: dict[str, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    converters = pytest.importorskip("converters")
    target = tmp_path / "model"
    shutil.copytree(folders["gpt2"], target)
    out = tmp_path / "bp.json"
    rc, err = _run(capsys, "--model", str(target), "--data", str(data["a"]), "-o", str(out), "--quiet", "--embed")
    assert rc == 0, err
    back = converters.extract(target)
    assert back is not None and bf.digest(back) == bf.digest(bf.load(out))


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        (["--budget", "0.2", "--threshold", "0.5"], "--rule"),
        (["--rule", "marginal", "--budget", "0.5"], "--rule"),
        (["--budget", "1.5"], "--budget"),
        (["--budget", "nan"], "--budget"),
        (["--eta", "-1"], "--eta"),
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "x"], "--batch-size"),
        (["--seq-len", "100000"], "--seq-len"),
        (["--max-batches", "0"], "--max-batches"),
        (["--min-examples", "-3"], "--min-examples"),
        (["--seed", "-1"], "--seed"),
        (["--cost-fixed", "inf"], "--cost-fixed"),
        (["--cost-fixed", "nan"], "--cost-fixed"),
        (["--cost-per-parameter", "-1e-3"], "--cost-per-parameter"),
        (["--cost-unit", ""], "--cost-unit"),
        (["--weight", "nope=1"], "--weight"),
        (["--weight", "news=inf"], "--weight"),
        (["--weight", "news"], "--weight"),
        (["--weight", "news=0"], "--weight"),
        (["--data", "news=elsewhere.txt"], "--data"),
        (["--data", "bad name.txt"], "--data"),
        (["--device", "tpu"], "--device"),
        (["--dtype", "fp8"], "--dtype"),
        (["--granularity", "layer"], "--granularity"),
        (["--loss", "contrastive", "--loss", "nonsense"], "--loss"),
    ],
)
def test_usage_errors(flags: list[str], flag: str, folders: dict[str, Path], data: dict[str, Path],
                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every flag mistake: usage-error located at the flag, exit 2, one line, nothing written."""
    out = tmp_path / "never.json"
    base = ["--model", str(folders["gpt2"]), "--data", f"news={data['a']}"]
    if flags[0] == "--data":
        data["a"].with_name(flags[1].partition("=")[2] or "x").write_text("")
        base = ["--model", str(folders["gpt2"]), "--data", f"news={data['a']}"]
    err = _expect_error(capsys, out, 2, "usage-error", *base, *flags)
    assert err.startswith(f"error: usage-error at {flag}: ") and err.count("\n") == 1, err


def test_numbers_are_checked_before_any_work(folders: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A bad number is reported even when the data and model are unusable: flags come first."""
    err = _expect_error(capsys, tmp_path / "never.json", 2, "usage-error", "--model", str(tmp_path / "nowhere"),
                        "--data", str(tmp_path / "absent.txt"), "--cost-fixed", "inf")
    assert "--cost-fixed" in err


def test_huge_weights_are_scaled_without_overflow() -> None:
    """--weight x=1e308 --weight y=1e308: 0.5 and 0.5, not 0 and 1 through an infinite sum."""
    from reference_impl.cli_common import parse_weights

    assert parse_weights(["x=1e308", "y=1e308"]) == {"x": 0.5, "y": 0.5}
    assert parse_weights(["x=3", "y=1"]) == {"x": 0.75, "y": 0.25}
    assert parse_weights([]) is None


def test_a_base_encoder_needs_a_loss(folders: dict[str, Path], data: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A model without a loss of its own: the missing --loss is a usage-error, not missing-field."""
    bert = make_folder(tmp_path / "bert", "bert")
    err = _expect_error(capsys, tmp_path / "never.json", 2, "usage-error", "--model", str(bert),
                        "--data", str(data["a"]))
    assert "--loss" in err and "contrastive" in err
