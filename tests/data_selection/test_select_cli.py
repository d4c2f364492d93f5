"""`blueprint select-data` end to end on tiny model folders, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import blueprint_format as bf
from blueprint_format.cli import main
from tests.data_selection.folders import make_folder, write_jsonl

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def cls_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("cls") / "model", "cls")


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("gpt2") / "model", "gpt2")


@pytest.fixture(scope="module")
def scored(cls_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("run")
    data = write_jsonl(d / "train.jsonl", 40)
    code = main([
        "select-data", "--model", str(cls_folder), "--data", str(data), "--fraction", "0.3",
        "-o", str(d / "sel.jsonl"), "--scores", str(d / "scores.jsonl"), "--batch-size", "8", "--quiet",
    ])
    assert code == 0
    return {"data": data, "sel": d / "sel.jsonl", "scores": d / "scores.jsonl", "dir": d}


def _scores(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_keeps_highest_scores_in_input_order(scored: dict[str, Path]) -> None:
    rows = _scores(scored["scores"])
    assert [r["index"] for r in rows] == list(range(40))
    assert {r["method"] for r in rows} == {"per-example-grad-norm"}
    assert {r["modules_digest"] for r in rows} == {"all"}
    assert all(r["score"] > 0 for r in rows)
    sel = [json.loads(line) for line in scored["sel"].read_text().splitlines()]
    assert len(sel) == 12  # round(0.3 * 40)
    ids = [s["id"] for s in sel]
    assert ids == sorted(ids)  # input order, original lines (the extra `id` field survives)
    top = sorted(range(40), key=lambda i: -rows[i]["score"])[:12]
    assert sorted(top) == ids


def test_scores_do_not_depend_on_batch_size(scored: dict[str, Path], cls_folder: Path, tmp_path: Path) -> None:
    code = main([
        "select-data", "--model", str(cls_folder), "--data", str(scored["data"]), "--fraction", "0.3",
        "-o", str(tmp_path / "s.jsonl"), "--scores", str(tmp_path / "sc.jsonl"), "--batch-size", "40", "--quiet",
    ])
    assert code == 0
    a = [r["score"] for r in _scores(scored["scores"])]
    b = [r["score"] for r in _scores(tmp_path / "sc.jsonl")]
    assert a == pytest.approx(b, rel=1e-4)


def test_from_scores_and_drop_top(scored: dict[str, Path], cls_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "sel.jsonl"
    code = main([
        "select-data", "--model", str(cls_folder), "--data", str(scored["data"]), "--fraction", "0.25",
        "--drop-top", "0.1", "--from-scores", str(scored["scores"]), "-o", str(out), "--quiet",
    ])
    assert code == 0
    rows = _scores(scored["scores"])
    order = sorted(range(40), key=lambda i: -rows[i]["score"])
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == sorted(order[4:14])  # top 4 dropped as outliers, next 10 kept


def test_scores_of_another_model_are_refused(
    scored: dict[str, Path], gpt2_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sel.jsonl"
    code = main([
        "select-data", "--model", str(gpt2_folder), "--data", str(scored["data"]), "--fraction", "0.3",
        "--from-scores", str(scored["scores"]), "-o", str(out),
    ])
    assert code == 1
    assert "structure-digest-mismatch" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("fraction", ["0", "-0.1", "1.5", "nan"])
def test_fraction_outside_range(scored: dict[str, Path], cls_folder: Path, tmp_path: Path, fraction: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sel.jsonl"
    code = main(["select-data", "--model", str(cls_folder), "--data", str(scored["data"]), "--fraction", fraction,
                 "-o", str(out)])
    assert code == 2  # a flag mistake
    assert "error: usage-error at --fraction" in capsys.readouterr().err
    assert not out.exists()


def test_empty_data(cls_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "empty.jsonl"
    data.write_text("\n\n")
    out = tmp_path / "sel.jsonl"
    code = main(["select-data", "--model", str(cls_folder), "--data", str(data), "--fraction", "0.5", "-o", str(out)])
    assert code == 1  # refused data content
    assert "empty-document" in capsys.readouterr().err
    assert not out.exists()


def test_long_examples_truncated_with_warning(gpt2_folder: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "text.txt"
    data.write_text("short line\n" + " ".join(["word"] * 200) + "\nanother short one here\n")
    out = tmp_path / "sel.jsonl"
    code = main(["select-data", "--model", str(gpt2_folder), "--data", str(data), "--fraction", "0.5",
                 "-o", str(out), "--seq-len", "512"])
    assert code == 0
    err = capsys.readouterr().err
    assert "1 of 3 examples are longer than 64 tokens and are truncated" in err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 2 and all("text" in x for x in lines)  # .txt in, .jsonl out


def test_blueprint_restriction_and_summary(scored: dict[str, Path], cls_folder: Path, tmp_path: Path) -> None:
    bp_path = tmp_path / "bp.json"
    assert main(["compute", "--model", str(cls_folder), "--data", f"train={scored['data']}", "-o", str(bp_path),
                 "--batch-size", "8", "--quiet", "--granularity", "module"]) == 0
    bp = bf.load(bp_path)
    assert bp.data_selection is None
    out_bp = tmp_path / "bp2.json"
    scores = tmp_path / "scores.jsonl"
    code = main([
        "select-data", "--model", str(cls_folder), "--data", str(scored["data"]), "--fraction", "0.3",
        "--blueprint", str(bp_path), "--update-blueprint", str(out_bp), "--scores", str(scores),
        "-o", str(tmp_path / "sel.jsonl"), "--domain", "train", "--quiet", "--drop-top", "0.05",
    ])
    assert code == 0
    new = bf.load(out_bp)
    ds = new.data_selection
    assert ds is not None
    assert (ds.examples_total, ds.examples_selected, ds.direction, ds.fraction) == (40, 12, "highest", 0.3)
    assert ds.drop_top_fraction == 0.05 and ds.domain == "train"
    q = ds.score_quantiles
    assert q is not None and 0 < q.p10 <= q.p50 <= q.p90
    # only aggregates: no per-example number of the scores file appears in the blueprint
    rows = _scores(scores)
    assert {r["modules_digest"] for r in rows} != {"all"}
    text = out_bp.read_text()
    assert not any(json.dumps(r["score"]) in text for r in rows)
    # restricted scores are smaller than all-module scores for the same examples
    full = _scores(scored["scores"])
    assert all(r["score"] <= f["score"] * (1 + 1e-6) for r, f in zip(rows, full))
    # reusing the all-module scores file with the blueprint is refused (other modules)
    code = main([
        "select-data", "--model", str(cls_folder), "--data", str(scored["data"]), "--fraction", "0.3",
        "--blueprint", str(bp_path), "--from-scores", str(scored["scores"]), "-o", str(tmp_path / "x.jsonl"),
    ])
    assert code == 1 and not (tmp_path / "x.jsonl").exists()


def test_scores_of_other_data_are_refused(scored: dict[str, Path], cls_folder: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    other = write_jsonl(tmp_path / "other.jsonl", 40, seed=9)  # same size, other texts
    out = tmp_path / "sel.jsonl"
    code = main(["select-data", "--model", str(cls_folder), "--data", str(other), "--fraction", "0.3",
                 "--from-scores", str(scored["scores"]), "-o", str(out)])
    assert code == 1  # refused content: scores of other data
    assert "bad-digest" in capsys.readouterr().err
    assert not out.exists()


def test_balance_labels(scored: dict[str, Path], cls_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "sel.jsonl"
    code = main(["select-data", "--model", str(cls_folder), "--data", str(scored["data"]), "--fraction", "0.3",
                 "--from-scores", str(scored["scores"]), "--balance-labels", "-o", str(out), "--quiet"])
    assert code == 0
    sel = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(sel) == 12
    assert sum(s["label"] == "pos" for s in sel) == 6  # 20 of each label in the pool
    rows = _scores(scored["scores"])
    for label in ("pos", "neg"):
        ids = [i for i in range(40) if (i % 2 == 1) == (label == "pos")]
        top = sorted(sorted(ids, key=lambda i: -rows[i]["score"])[:6])
        assert [s["id"] for s in sel if s["label"] == label] == top
