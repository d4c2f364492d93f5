"""`blueprint finetune` end to end on a tiny model folder; PEFT export; the Trainer callback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from blueprint_format.api import dump
from reference_impl.apply import apply_blueprint, load_update
from tests.finetune.conftest import bert_batches, tiny_bert_cls

WORDS = ["good", "bad", "great", "awful", "fine", "poor", "nice", "sad", "film", "plot", "the", "a", "was", "very"]


def _folder(tmp_path: Path) -> Path:
    """A saved tiny BertForSequenceClassification with a WordPiece tokenizer built from a small vocab."""
    from transformers import BertTokenizerFast

    folder = tmp_path / "model"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    tok.save_pretrained(folder)
    model = tiny_bert_cls()
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _data(tmp_path: Path, n: int, name: str, seed: int) -> Path:
    import random

    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        y = rng.randrange(2)
        words = [rng.choice(["good", "great", "nice", "fine"] if y else ["bad", "awful", "poor", "sad"])]
        words += rng.choices(["the", "film", "plot", "was", "very", "a"], k=4)
        rng.shuffle(words)
        lines.append(json.dumps({"text": " ".join(words), "label": ["neg", "pos"][y]}))
    p = tmp_path / f"{name}.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reference_impl.compute import compute_blueprint
    from reference_impl.data import make_batches, read_examples

    folder = _folder(tmp_path)
    train = _data(tmp_path, 64, "train", 0)
    evals = _data(tmp_path, 32, "eval", 1)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=2, label2id={"neg": 0, "pos": 1}, id2label={0: "neg", 1: "pos"}
    )
    tok = AutoTokenizer.from_pretrained(folder)
    batches = make_batches(read_examples(train), tok, model, "sequence-classification", 16, 16)
    bp = compute_blueprint(model, {"reviews": batches}, model_path=folder, device="cpu", min_examples_per_aggregate=8)
    dump(bp, tmp_path / "bp.json")
    return {"model": folder, "train": train, "eval": evals, "bp": tmp_path / "bp.json", "tmp": tmp_path}


@pytest.mark.slow
@pytest.mark.parametrize(("budget", "granularity"), [(0.3, "element"), (1.0, "module")])
def test_cli_finetune_end_to_end(setup: dict[str, Path], capsys: pytest.CaptureFixture[str], budget: float,
                                 granularity: str) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification

    from blueprint_format.cli import main

    out = setup["tmp"] / f"out-{granularity}"
    status = main([
        "finetune", "--model", str(setup["model"]), "--blueprint", str(setup["bp"]), "--train", str(setup["train"]),
        "--eval", str(setup["eval"]), "--budget", str(budget), "--granularity", granularity, "--max-steps", "6",
        "--batch-size", "8", "--seq-len", "16", "--lr", "1e-3", "--seed", "1", "-o", str(out),
    ])
    assert status == 0
    line = capsys.readouterr().out
    assert line.startswith("finetune: accuracy") and "trainable state" in line
    summary = json.loads((out / "summary.json").read_text())
    meter = json.loads((out / "meter.json").read_text())
    assert summary["steps"] == 6 and len(meter["points"]) >= 2
    assert meter["points"][-1]["gamma"]["flops"] > 0
    if budget < 1.0:
        assert 0 < summary["trainable_fraction"] <= budget
    else:
        assert summary["trainable_fraction"] == 1.0
    with safe_open(str(out / "update.safetensors"), framework="pt") as f:
        assert f.metadata()["format"] == "gradient-blueprints-update/2"
    # The update loads onto the base model and changes its outputs.
    base = AutoModelForSequenceClassification.from_pretrained(setup["model"], num_labels=2)
    x = bert_batches(3, 1)[0]
    x = {"input_ids": x["input_ids"] % 19, "attention_mask": x["attention_mask"]}
    base.eval()
    before = base(**x).logits
    load_update(base, out / "update.safetensors")
    assert not torch.equal(before, base(**x).logits)


def test_cli_bad_budget_and_mismatch(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from blueprint_format.cli import main

    common = ["finetune", "--model", str(setup["model"]), "--train", str(setup["train"]), "--eval",
              str(setup["eval"]), "--quiet", "-o", str(setup["tmp"] / "o")]
    assert main([*common, "--blueprint", str(setup["bp"]), "--budget", "1.5"]) == 2
    assert "usage-error" in capsys.readouterr().err
    other = json.loads(setup["bp"].read_text())
    other["model"]["structure_digest"] = "sha256:" + "1" * 64
    (setup["tmp"] / "other.json").write_text(json.dumps(other))
    assert main([*common, "--blueprint", str(setup["tmp"] / "other.json")]) == 1
    assert "structure-digest-mismatch" in capsys.readouterr().err
    assert not (setup["tmp"] / "o" / "update.safetensors").exists()


@pytest.mark.slow
def test_lora_export_follows_k_star() -> None:
    from peft import get_peft_model

    from reference_impl.compute import compute_blueprint
    from reference_impl.peft_export import lora_config, lora_rank

    base = tiny_bert_cls()
    bp = compute_blueprint(base, {"a": bert_batches(0, 3)}, device="cpu", min_examples_per_aggregate=1)
    h = apply_blueprint(tiny_bert_cls(), bp, budget=0.3, granularity="element", local_batches=bert_batches(1, 2))
    export = lora_config(base, h)
    assert export.ranks and all(r >= 1 for r in export.ranks.values())
    sel = {s.name: s for s in h.selection if s.selected}
    for name, r in export.ranks.items():
        lin = base.get_submodule(name)
        assert r == lora_rank(sel[name].k, lin.in_features, lin.out_features)
    assert set(export.ranks) | set(export.skipped) == set(sel)
    peft_model = get_peft_model(base, export.config)
    lora_params = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert lora_params == export.trainable
    for name, r in export.ranks.items():
        mod = peft_model.get_submodule("base_model.model." + name)
        assert mod.r["default"] == r
    assert lora_rank(0.5, 16, 16) == 4 and lora_rank(1.0, 16, 16) == 8 and lora_rank(1e-6, 16, 16) == 1


def test_shira_mask_from_scores() -> None:
    from peft import get_peft_model

    from reference_impl.peft_export import shira_available, shira_config

    if not shira_available():
        pytest.skip("the installed PEFT has no SHiRA")
    base = tiny_bert_cls()
    name = "bert.encoder.layer.0.attention.self.query"
    scores = torch.arange(256, dtype=torch.float32).reshape(16, 16)
    config = shira_config(base, {name: scores}, r=1)
    model = get_peft_model(base, config)
    layer = model.get_submodule("base_model.model." + name)
    masks = [b for n, b in layer.named_buffers() if "mask" in n.lower()] + [
        v for k, v in vars(layer).items() if "mask" in k.lower() and isinstance(v, torch.Tensor)
    ]
    trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "shira" in n)
    assert trainable == 1 * (16 + 16)
    if masks:  # the highest-scoring entries are the ones kept
        assert bool(masks[0].reshape(-1)[-32:].all())


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["module", "element"])
def test_trainer_callback_meters_and_trains_only_the_selection(tmp_path: Path, granularity: str) -> None:
    from transformers import TrainingArguments

    from reference_impl.compute import compute_blueprint
    from reference_impl.meter import StoppingRule
    from reference_impl.trainer_callback import blueprint_trainer

    model = tiny_bert_cls()
    bp = compute_blueprint(model, {"a": bert_batches(0, 3)}, device="cpu", min_examples_per_aggregate=1)
    rows = [{k: v[i] for k, v in b.items()} for b in bert_batches(4, 8) for i in range(4)]
    args = TrainingArguments(output_dir=str(tmp_path / "t"), per_device_train_batch_size=4, max_steps=8,
                             eval_strategy="steps", eval_steps=2, logging_steps=2, report_to=[], save_strategy="no",
                             learning_rate=1e-2, use_cpu=True)
    frozen_before = {n: p.clone() for n, p in model.named_parameters()}
    extra = {"local_batches": bert_batches(1, 2)} if granularity == "element" else {}
    trainer = blueprint_trainer(
        model, bp, {"budget": 0.3, "granularity": granularity, **extra}, metric="eval_loss",
        stopping=StoppingRule(eta=-1e30), args=args, train_dataset=rows, eval_dataset=rows[:8],
    )
    trainer.train()
    meter = trainer.meter
    assert len(meter.points) >= 2 and meter.steps >= 2
    assert meter.points[-1].gamma["flops_weight_grad"] > 0
    assert meter.points[-1].gamma["trainable_state_bytes"] > 0
    opt = trainer.optimizer
    handle = trainer.blueprint_handle
    opt_params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in handle.parameters()}  # the Trainer found the sparse values too
    masks = {e.param_name: e.selection.mask() for e in handle.sparse}
    assert bool(masks) == (granularity == "element")
    for n, p in model.named_parameters():
        if n in masks:  # trained in place: the selected entries moved, the others did not
            assert torch.equal(p[~masks[n]], frozen_before[n][~masks[n]]), n
            assert not torch.equal(p[masks[n]], frozen_before[n][masks[n]]), n
        elif not p.requires_grad and n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n
