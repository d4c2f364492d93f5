"""Causal-LM fine-tuning: response-only labels, token-weighted evaluation, `blueprint finetune
--task causal-lm` end to end on a tiny Llama folder, and the refusals of bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from blueprint_format.api import dump
from reference_impl.data import Example, causal_lm_batches, read_examples
from reference_impl.losses import IGNORE_INDEX, causal_lm_token_loss, response_only_labels
from tests.finetune.conftest import tiny_llama_folder

PAIRS = [
    ("what is your name", "my name is robot"),
    ("how are you", "i am fine"),
    ("do you like music", "yes i love music"),
    ("do you like science", "yes i like science"),
    ("what is a computer", "a computer is a robot"),
    ("are you good", "yes i am good"),
]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama folder, its blueprint, prompt/response training data and plain-text eval data."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reference_impl.compute import compute_blueprint

    tmp = tmp_path_factory.mktemp("llama")
    folder = tiny_llama_folder(tmp / "model")
    train = _write_jsonl(tmp / "train.jsonl", [{"prompt": p + " ", "response": r} for p, r in PAIRS * 4])
    evals = tmp / "eval.txt"
    evals.write_text("\n".join(f"{p} {r}" for p, r in PAIRS) + "\n", encoding="utf-8")
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    batches = causal_lm_batches(read_examples(train), tok, 8, 16).batches
    bp = compute_blueprint(model, {"chat": batches}, model_path=folder, device="cpu", min_examples_per_aggregate=8)
    dump(bp, tmp / "bp.json")
    return {"model": folder, "train": train, "eval": evals, "bp": tmp / "bp.json", "tmp": tmp}


def test_response_only_labels() -> None:
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    labels = response_only_labels(ids, mask, torch.tensor([2, 0]))
    x = IGNORE_INDEX
    assert labels.tolist() == [[x, x, 7, 8, 9], [5, 6, 7, x, x]]


def test_prompt_tokens_carry_no_loss(llama: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama["model"])
    model = AutoModelForCausalLM.from_pretrained(llama["model"])
    examples = [Example("how are you i am fine", prompt="how are you "), Example("hello my name is robot")]
    made = causal_lm_batches(examples, tok, 2, 16)
    batch = made.batches[0]
    prompt_len = len(tok("how are you ")["input_ids"])
    ids, labels = batch["input_ids"], batch["labels"]
    assert (labels[0, :prompt_len] == IGNORE_INDEX).all() and (labels[0, prompt_len:] != IGNORE_INDEX).all()
    assert int(ids[0, -1]) == tok.eos_token_id  # the response is closed by </s>
    assert (labels[1] == IGNORE_INDEX).sum() == (batch["attention_mask"][1] == 0).sum()  # plain text: pads only
    # The gradient of the loss reaches no logit that predicts a prompt token.
    out = model(input_ids=ids, attention_mask=batch["attention_mask"])
    logits = out.logits
    logits.retain_grad()
    total, count = causal_lm_token_loss(model, batch)
    # Independent check: the token loss by a loop over positions.
    naive, n = 0.0, 0
    logp = torch.log_softmax(logits.detach().float(), dim=-1)
    for i in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            if int(labels[i, t]) != IGNORE_INDEX:
                naive -= float(logp[i, t - 1, int(ids[i, t])])
                n += 1
    assert count == n == made.tokens and float(total.detach()) == pytest.approx(naive, rel=1e-5)
    loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                       ignore_index=IGNORE_INDEX)
    loss.backward()
    grad = logits.grad
    assert grad is not None
    assert torch.equal(grad[0, : prompt_len - 1], torch.zeros_like(grad[0, : prompt_len - 1]))
    assert bool(grad[0, prompt_len - 1].abs().sum() > 0)
    # The model's own loss (which shifts the labels itself) is the same mean.
    own = model(**batch).loss
    assert float(own.detach()) == pytest.approx(naive / n, rel=1e-5)


def test_long_texts_are_cut_and_counted(llama: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama["model"])
    examples = [Example("hello " * 30), Example("what is your name my name is robot", prompt="what is your name " * 4)]
    made = causal_lm_batches(examples, tok, 4, 8)
    assert made.truncated == 2 and made.dropped == 1  # the second one's response was cut away entirely
    assert len(made.batches) == 1 and made.batches[0]["input_ids"].shape == (1, 8)


@pytest.mark.slow
def test_cli_causal_lm_end_to_end(llama: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from blueprint_format.cli import main
    from reference_impl.apply import load_update

    out = llama["tmp"] / "out"
    status = main([
        "finetune", "--model", str(llama["model"]), "--blueprint", str(llama["bp"]), "--train", str(llama["train"]),
        "--eval", str(llama["eval"]), "--budget", "0.3", "--granularity", "element", "--max-steps", "8",
        "--batch-size", "4", "--seq-len", "12", "--lr", "3e-2", "--save-merged", "--checkpointing", "-o", str(out),
    ])
    assert status == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("finetune: eval loss") and "perplexity" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    meter = json.loads((out / "meter.json").read_text())
    assert summary["task"] == "causal-lm" and summary["steps"] == 8 and summary["checkpointing"] is True
    assert summary["perplexity"] == pytest.approx(math.exp(summary["eval_loss"]))
    assert summary["eval_loss"] < summary["initial_eval_loss"]
    assert 0 < summary["trainable_fraction"] <= 0.3
    last = meter["points"][-1]
    assert meter["metric"] == "neg_eval_loss" and last["psi"] == pytest.approx(-summary["eval_loss"])
    assert last["metrics"]["perplexity"] == pytest.approx(summary["perplexity"])
    with safe_open(str(out / "update.safetensors"), framework="pt") as f:
        assert f.metadata()["format"] == "gradient-blueprints-update/2"
    # The merged folder loads with transformers, and equals the base model plus the saved update.
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(llama["model"]).eval()
    x = torch.tensor([[2, 5, 6, 7, 8]])
    before = base(input_ids=x).logits
    load_update(base, out / "update.safetensors")
    torch.testing.assert_close(base(input_ids=x).logits, merged(input_ids=x).logits, rtol=0, atol=0)
    assert not torch.equal(before, merged(input_ids=x).logits)


@pytest.mark.parametrize("granularity", ["module", "row"])
def test_granularity_defaults_to_the_blueprints_own(llama: dict[str, Path], granularity: str) -> None:
    """Without --granularity finetune selects at the granularity the blueprint's k* were made for."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from blueprint_format.api import dump, load
    from blueprint_format.cli import main
    from reference_impl.compute import compute_blueprint

    tok = AutoTokenizer.from_pretrained(llama["model"])
    batches = causal_lm_batches(read_examples(llama["train"]), tok, 8, 16).batches
    model = AutoModelForCausalLM.from_pretrained(llama["model"])
    bp = llama["tmp"] / f"bp-{granularity}.json"
    dump(compute_blueprint(model, {"chat": batches}, model_path=llama["model"], device="cpu",
                           min_examples_per_aggregate=8, granularity=granularity), bp)
    assert load(bp).allocation.granularity == granularity
    out = llama["tmp"] / f"auto-{granularity}"
    status = main([
        "finetune", "--model", str(llama["model"]), "--blueprint", str(bp), "--train", str(llama["train"]),
        "--eval", str(llama["eval"]), "--budget", "0.3", "--max-steps", "1", "--batch-size", "4", "--seq-len", "12",
        "--quiet", "-o", str(out),
    ])
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["granularity"] == granularity
    from safetensors import safe_open

    with safe_open(str(out / "update.safetensors"), framework="pt") as f:
        kinds = set(json.loads(f.metadata()["kinds"]).values())
    # Row selection trains some matrices partly (1-D tensors fall back to elements); module only whole tensors.
    assert kinds == {"whole"} if granularity == "module" else "sparse-row" in kinds


def _bert_folder(tmp: Path) -> Path:
    from tests.finetune.test_cli_integrations import _folder

    return _folder(tmp)


def _refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from blueprint_format.cli import main

    status = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("error") or " at " in line]
    return status, lines[-1] if lines else "\n".join(err)


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("budget", 2, "usage-error"),
        ("not-binding", 1, "structure-digest-mismatch"),
        ("task", 1, "unsupported-model"),
        ("empty-train", 1, "empty-document"),
        ("empty-eval", 1, "empty-document"),
        ("missing-response", 1, "missing-field"),
        ("missing-label", 1, "missing-field"),
        ("non-integer-label", 1, "wrong-type"),
    ],
)
def test_bad_input_is_one_coded_line_and_writes_nothing(
    llama: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, status: int, code: str
) -> None:
    args = {"--model": str(llama["model"]), "--blueprint": str(llama["bp"]), "--train": str(llama["train"]),
            "--eval": str(llama["eval"]), "--budget": "0.2"}
    if case == "budget":
        args["--budget"] = "0"
    elif case == "not-binding":
        doc = json.loads(llama["bp"].read_text())
        doc["model"]["structure_digest"] = "sha256:" + "2" * 64
        args["--blueprint"] = str(_write(tmp_path / "other.json", json.dumps(doc)))
    elif case == "task":
        args["--model"] = str(_bert_folder(tmp_path))
        args["--task"] = "causal-lm"
    elif case == "empty-train":
        args["--train"] = str(_write(tmp_path / "empty.jsonl", "\n\n"))
    elif case == "empty-eval":
        args["--eval"] = str(_write(tmp_path / "empty.txt", ""))
    elif case == "missing-response":
        args["--train"] = str(_write_jsonl(tmp_path / "t.jsonl", [{"prompt": "hello"}]))
    elif case in ("missing-label", "non-integer-label"):
        label = {} if case == "missing-label" else {"label": 1.5}
        args["--train"] = str(_write_jsonl(tmp_path / "t.jsonl", [{"text": "good film", **label}]))
        args["--task"] = "sequence-classification"
    out = tmp_path / "out"
    argv = ["finetune", *[x for kv in args.items() for x in kv], "--quiet", "-o", str(out)]
    got, line = _refusal(argv, capsys)
    assert got == status, line
    assert code in line and "Traceback" not in line
    assert not out.exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_train_under_bf16_autocast_moves_only_the_selection(llama: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from blueprint_format.api import load
    from reference_impl.apply import apply_blueprint
    from reference_impl.finetune import FinetuneConfig, train

    tok = AutoTokenizer.from_pretrained(llama["model"])
    model = AutoModelForCausalLM.from_pretrained(llama["model"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = causal_lm_batches(read_examples(llama["train"]), tok, 4, 16).batches
    handle = apply_blueprint(model, load(llama["bp"]), budget=0.3, granularity="row", local_batches=batches[:2],
                             model_path=llama["model"])
    cfg = FinetuneConfig(max_steps=3, lr=3e-2, dtype="bf16-autocast", device="cpu", progress=False)
    result = train(model, handle.parameters(), batches, batches[:2], cfg, handle=handle)
    assert math.isfinite(result.metrics["eval_loss"]) and result.steps == 3
    masks = {e.param_name: e.selection.mask() for e in handle.sparse}
    assert masks
    for name, p in model.named_parameters():
        if name in masks:
            assert torch.equal(p[~masks[name]], before[name][~masks[name]])
            assert not torch.equal(p[masks[name]], before[name][masks[name]])
        elif name in before and name not in handle.dense:
            assert torch.equal(p, before[name]), name
