"""A plain fine-tuning loop for sequence classification that trains only what a blueprint selects.

`train(model, handle, train_batches, eval_batches, ...)` runs AdamW over `handle.parameters()`
only (so optimizer state is built for the selection, never for frozen weights: the LISA lesson),
evaluates accuracy at fixed intervals, and feeds a Meter. `run_finetune(...)` is the
`blueprint finetune` command behind the CLI: load a local Hugging Face folder, apply the blueprint,
train, and write `update.safetensors`, `meter.json` and `summary.json` into the output folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reference_impl.meter import Meter, StoppingRule

LOCAL_BATCHES = 4  # batches of the training data used for the local blend G~


@dataclass
class TrainResult:
    """What a training run produced."""

    steps: int
    accuracy: float
    initial_accuracy: float
    stopped_early: bool
    step_time_s: float  # mean wall seconds per optimizer step
    meter: Meter
    optimizer: torch.optim.Optimizer


def _to(batch: Any, device: torch.device) -> Any:
    from reference_impl.compute import to_device

    return to_device(batch, device)


@torch.no_grad()
def accuracy(model: nn.Module, batches: Sequence[dict[str, Any]], device: torch.device) -> float:
    """Share of examples whose argmax logit equals the label."""
    was = model.training
    model.eval()
    correct = total = 0
    for b in batches:
        b = _to(b, device)
        logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits
        correct += int((logits.argmax(dim=-1) == b["labels"]).sum())
        total += int(b["labels"].numel())
    model.train(was)
    return correct / total if total else float("nan")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train(
    model: nn.Module,
    parameters: Sequence[nn.Parameter],
    train_batches: Sequence[dict[str, Any]],
    eval_batches: Sequence[dict[str, Any]],
    *,
    handle: Any | None = None,
    max_steps: int = 100,
    lr: float = 5e-5,
    weight_decay: float = 0.01,
    eval_every: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    stopping: StoppingRule | None = None,
    progress: bool = True,
    on_eval: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train `parameters` (AdamW) for `max_steps` steps over `train_batches` (cycled, reshuffled each epoch).

    The model's own loss (`labels` in the batch) is used. Accuracy on `eval_batches` is measured
    before training, every `eval_every` steps (default: 5 points in all) and at the end.
    """
    dev = torch.device(device)
    seed_everything(seed)
    model.to(dev)
    model.train()
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires a gradient")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    meter = Meter(model, handle=handle, optimizer=optimizer, metric="accuracy", device=dev,
                  callbacks=[stopping] if stopping is not None else None)
    every = eval_every or max(1, math.ceil(max_steps / 4))
    order = list(range(len(train_batches)))
    rng = random.Random(seed)
    initial = accuracy(model, eval_batches, dev)
    meter.evaluate(initial)
    bar: Any = contextlib.nullcontext(None)
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max_steps, desc="finetune", unit="step", file=sys.stderr, dynamic_ncols=True)
    step = 0
    acc = initial
    stopped = False
    with bar as pbar:
        meter.start()
        while step < max_steps and not stopped:
            rng.shuffle(order)
            for i in order:
                batch = _to(train_batches[i], dev)
                loss = model(**batch).loss
                loss.backward()
                optimizer.step()
                step += 1
                # Before zero_grad, so that the gradients count in the trainable state they occupy.
                meter.step(examples=int(batch["labels"].numel()))
                optimizer.zero_grad(set_to_none=True)
                if pbar is not None:
                    pbar.update(1)
                    pbar.set_postfix(loss=f"{float(loss):.3f}", acc=f"{acc:.3f}")
                if step % every == 0 or step == max_steps:
                    meter.pause()
                    acc = accuracy(model, eval_batches, dev)
                    meter.evaluate(acc)
                    if on_eval is not None:
                        on_eval(step, acc)
                    meter.resume()
                    if stopping is not None and stopping.should_stop:
                        stopped = True
                        break
                if step >= max_steps:
                    break
        meter.pause()
    meter.close()
    return TrainResult(step, acc, initial, stopped, meter.wall_s / max(step, 1), meter, optimizer)


# ----------------------------------------------------------------------------------------------
# the `blueprint finetune` command


def _label_space(train: Sequence[Any], evals: Sequence[Any]) -> tuple[dict[str, int] | None, int]:
    """(label2id for string labels or None for integer labels, number of classes)."""
    from reference_impl.errors import input_error

    labels = [e.label for e in list(train) + list(evals)]
    if any(v is None for v in labels):
        raise input_error("missing-field", "every training and evaluation example needs a `label`")
    if all(isinstance(v, int) for v in labels):
        ints = [int(v) for v in labels if isinstance(v, int)]
        if min(ints) < 0:
            raise input_error("out-of-range", "integer labels must be >= 0")
        return None, max(ints) + 1
    if all(isinstance(v, str) for v in labels):
        names = sorted({str(v) for v in labels})
        return {n: i for i, n in enumerate(names)}, len(names)
    raise input_error("wrong-type", "labels must be all integers or all strings")


def run_finetune(
    model_path: str | Path,
    blueprint_path: str | Path,
    train_path: str | Path,
    eval_path: str | Path,
    out_dir: str | Path,
    *,
    budget: float = 0.2,
    granularity: str = "module",
    max_steps: int = 100,
    batch_size: int = 16,
    seq_len: int = 64,
    lr: float = 5e-5,
    seed: int = 0,
    blend: float = 0.5,
    domains: dict[str, float] | None = None,
    force: bool = False,
    device: str = "auto",
    progress: bool = True,
    eta: float | None = None,
    use_sidecar: bool = False,
) -> dict[str, Any]:
    """Fine-tune a local sequence-classification model on what the blueprint selects; write the results.

    Writes into `out_dir`: update.safetensors (the update alone), meter.json (the meter's report)
    and summary.json; returns the summary. Rows/elements are chosen from the gradients of the first
    LOCAL_BATCHES training batches, or from the blueprint's sidecar with `use_sidecar`.
    """
    import transformers

    from blueprint_format.api import load as load_blueprint
    from blueprint_format.atomic import atomic_write_bytes
    from reference_impl.apply import apply_blueprint, sidecar_scores
    from reference_impl.compute import resolve_device
    from reference_impl.data import make_batches, read_examples
    from reference_impl.errors import input_error

    mp = Path(model_path)
    bp = load_blueprint(blueprint_path)
    train_ex = read_examples(train_path)
    eval_ex = read_examples(eval_path)
    label2id, n_labels = _label_space(train_ex, eval_ex)
    extra: dict[str, Any] = {"num_labels": n_labels}
    if label2id is not None:
        extra["label2id"] = label2id
        extra["id2label"] = {i: n for n, i in label2id.items()}
    seed_everything(seed)
    try:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            mp, local_files_only=True, use_safetensors=True, **extra
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(mp, local_files_only=True)
    except Exception as exc:  # transformers raises many kinds for a bad folder
        raise input_error("unreadable-model", f"{mp}: cannot load the model or tokenizer: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    task = "sequence-classification"
    train_batches = make_batches(train_ex, tokenizer, model, task, batch_size, seq_len, where=str(train_path))
    eval_batches = make_batches(eval_ex, tokenizer, model, task, batch_size, seq_len, where=str(eval_path))
    dev = resolve_device(device)
    model.to(dev)
    scores = (
        sidecar_scores(bp, Path(blueprint_path).parent, granularity)
        if use_sidecar and granularity != "module" else None
    )
    handle = apply_blueprint(
        model, bp, budget=budget, domains=domains, granularity=granularity, element_scores=scores,
        consume_scores=scores is not None,
        local_batches=[_to(b, dev) for b in train_batches[:LOCAL_BATCHES]], blend=blend, force=force,
        model_path=mp if mp.is_dir() or mp.suffix == ".safetensors" else None,
    )
    stopping = StoppingRule(eta) if eta is not None else None
    result = train(
        model, handle.parameters(), train_batches, eval_batches, handle=handle, max_steps=max_steps, lr=lr,
        seed=seed, device=dev, stopping=stopping, progress=progress,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    update_bytes = handle.save_update(out / "update.safetensors")
    report = result.meter.report()
    report["selection"] = handle.summary()
    atomic_write_bytes(out / "meter.json", (json.dumps(report, indent=2) + "\n").encode())
    state = handle.trainable_state_bytes(result.optimizer)
    summary = {
        "model": str(mp),
        "budget": budget,
        "granularity": granularity,
        "steps": result.steps,
        "stopped_early": result.stopped_early,
        "accuracy": result.accuracy,
        "initial_accuracy": result.initial_accuracy,
        "trainable_fraction": handle.trainable_fraction,
        "trainable_parameters": handle.trainable_count,
        "trainable_state_bytes": state["total"],
        "peak_memory_bytes": int(result.meter.peak_memory_bytes()),
        "step_time_s": result.step_time_s,
        "flops": report["points"][-1]["gamma"]["flops"],
        "update_bytes": update_bytes,
        "update": str(out / "update.safetensors"),
    }
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary
