"""Fine-tuning that trains only what a blueprint selects: sequence classification and causal LM.

`train(model, parameters, train_batches, eval_batches, config)` runs AdamW over the given
parameters only (so optimizer state is built for the selection, never for frozen weights),
evaluates at fixed intervals and feeds a Meter: accuracy for sequence classification; mean token
loss and perplexity for a causal LM (Psi is then the negated eval loss, so that it grows with
capability). `run_finetune(...)` is the `blueprint finetune` command behind the CLI: load a local
Hugging Face folder, apply the blueprint, train, and write `update.safetensors`, `meter.json` and
`summary.json` (and, when asked, the merged model folder) into the output folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blueprint_format.models import Precision
from reference_impl.cli_common import DEVICES
from reference_impl.config import choice, config_error, finite_float, fraction, positive_int
from reference_impl.meter import Meter, StoppingRule

LOCAL_BATCHES = 4  # batches of the training data used for the local blend G~
#: What `--task` accepts: "auto" is the model's own task (sequence classification for a base
#: encoder given labelled data).
TASKS = ("auto", "causal-lm", "sequence-classification")
#: The precisions of blueprint_format.models.Precision that training supports: fp32 weights, bf16
#: weights, or fp32 weights under autocast (fp16 weights and fp64 would need a loss scaler / are pointless).
PRECISIONS = tuple(p for p in typing.get_args(Precision) if p in ("fp32", "bf16", "bf16-autocast", "fp16-autocast"))


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of a fine-tuning run, validated once (ConfigError: a usage-error at the field)."""

    task: str = "auto"
    budget: float = 0.2
    granularity: str = "auto"  # auto: the blueprint's own (allocation.granularity)
    max_steps: int = 100
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 5e-5
    weight_decay: float = 0.01
    seed: int = 0
    blend: float = 0.5
    domains: Mapping[str, float] | None = None
    force: bool = False
    device: str = "auto"
    dtype: str = "fp32"
    eval_every: int | None = None
    eta: float | None = None
    use_sidecar: bool = False
    checkpointing: bool = False
    save_merged: bool = False
    progress: bool = True
    trust_remote_code: bool = False
    apply_extra: Mapping[str, Any] = field(default_factory=dict)  # further ApplyConfig fields (control arms)

    def __post_init__(self) -> None:
        choice("task", self.task, TASKS)
        choice("dtype", self.dtype, PRECISIONS)
        choice("device", self.device, DEVICES)
        for name in ("max_steps", "batch_size", "seq_len"):
            positive_int(name, getattr(self, name))
        positive_int("seed", self.seed, minimum=0)
        positive_int("eval_every", self.eval_every, allow_none=True)
        finite_float("lr", self.lr, minimum=0.0, exclusive_minimum=True)
        finite_float("weight_decay", self.weight_decay, minimum=0.0)
        finite_float("eta", self.eta, allow_none=True)
        fraction("budget", self.budget)
        for flag in ("force", "use_sidecar", "checkpointing", "save_merged", "progress", "trust_remote_code"):
            if not isinstance(getattr(self, flag), bool):
                raise config_error(flag, f"{flag} must be True or False")
        # budget, granularity, blend and domains are checked there ("auto" is resolved per blueprint)
        self.apply_config(granularity="module" if self.granularity == "auto" else None)

    def apply_config(self, granularity: str | None = None) -> Any:
        """The ApplyConfig of this run (granularity: instead of this config's)."""
        from reference_impl.apply import ApplyConfig

        return ApplyConfig(budget=self.budget, granularity=granularity or self.granularity, domains=self.domains,
                           blend=self.blend, force=self.force, **dict(self.apply_extra))

    def for_blueprint(self, bp: Any) -> FinetuneConfig:
        """This config with granularity "auto" replaced by the granularity the blueprint's k* were made for."""
        from dataclasses import replace

        return replace(self, granularity=bp.allocation.granularity) if self.granularity == "auto" else self


@dataclass
class TrainResult:
    """What a training run produced. `metrics` are the last evaluation's figures."""

    steps: int
    psi: float
    initial_psi: float
    metrics: dict[str, float]
    initial_metrics: dict[str, float]
    stopped_early: bool
    step_time_s: float  # mean wall seconds per optimizer step
    meter: Meter
    optimizer: torch.optim.Optimizer

    @property
    def accuracy(self) -> float:
        return self.metrics.get("accuracy", float("nan"))

    @property
    def initial_accuracy(self) -> float:
        return self.initial_metrics.get("accuracy", float("nan"))


def _to(batch: Any, device: torch.device) -> Any:
    from reference_impl.compute import to_device

    return to_device(batch, device)


def autocast_context(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    """torch.autocast for the "*-autocast" precisions, else nothing."""
    if not dtype.endswith("-autocast"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if dtype.startswith("bf16") else torch.float16)


def batch_task(batch: Mapping[str, Any]) -> str:
    """The task a batch was made for: token labels (2-D) for a causal LM, one label per example else."""
    labels = batch.get("labels")
    return "causal-lm" if isinstance(labels, torch.Tensor) and labels.dim() == 2 else "sequence-classification"


@torch.no_grad()
def evaluate(model: nn.Module, batches: Sequence[dict[str, Any]], device: torch.device,
             dtype: str = "fp32") -> dict[str, float]:
    """Accuracy (sequence classification), or mean token loss and perplexity (causal LM)."""
    from reference_impl.losses import causal_lm_token_loss

    was = model.training
    model.eval()
    causal = bool(batches) and batch_task(batches[0]) == "causal-lm"
    hits = count = 0
    loss_sum = 0.0
    with autocast_context(device, dtype):
        for b in batches:
            b = _to(b, device)
            if causal:
                total, n = causal_lm_token_loss(model, b)
                loss_sum += float(total)
                count += n
                continue
            logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits
            hits += int((logits.argmax(dim=-1) == b["labels"]).sum())
            count += int(b["labels"].numel())
    model.train(was)
    if causal:
        mean = loss_sum / count if count else float("nan")
        return {"eval_loss": mean, "perplexity": math.exp(min(mean, 700.0))}
    return {"accuracy": hits / count if count else float("nan")}


def psi_of(metrics: Mapping[str, float]) -> float:
    """Psi, growing with capability: accuracy, or the negated eval loss."""
    return metrics["accuracy"] if "accuracy" in metrics else -metrics["eval_loss"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _batch_cycle(n: int, seed: int) -> Iterator[int]:
    """Batch indices, reshuffled every epoch, forever."""
    rng = random.Random(seed)
    order = list(range(n))
    while True:
        rng.shuffle(order)
        yield from order


def _examples_in(batch: Mapping[str, Any]) -> int:
    labels = batch.get("labels")
    return int(labels.shape[0]) if isinstance(labels, torch.Tensor) else 0


def train(
    model: nn.Module,
    parameters: Sequence[nn.Parameter],
    train_batches: Sequence[dict[str, Any]],
    eval_batches: Sequence[dict[str, Any]],
    config: FinetuneConfig | None = None,
    *,
    handle: Any | None = None,
    stopping: StoppingRule | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    **settings: Any,
) -> TrainResult:
    """Train `parameters` (AdamW) for config.max_steps steps over `train_batches` (cycled,
    reshuffled each epoch) with the model's own loss (`labels` in the batch).

    config: a FinetuneConfig (its fields may also be given as keywords, e.g. max_steps=6, lr=1e-3);
    task and device are taken from the batches and config.device. Evaluation runs before training,
    every config.eval_every steps (default: 4 points in all) and at the end.
    """
    from dataclasses import replace

    from reference_impl.compute import resolve_device

    cfg = replace(config, **settings) if config is not None else FinetuneConfig(**settings)
    dev = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    model.to(dev)
    model.train()
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires a gradient")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    causal = bool(train_batches) and batch_task(train_batches[0]) == "causal-lm"
    meter = Meter(model, handle=handle, optimizer=optimizer, metric="neg_eval_loss" if causal else "accuracy",
                  device=dev, callbacks=[stopping] if stopping is not None else None)
    every = cfg.eval_every or max(1, math.ceil(cfg.max_steps / 4))
    initial = evaluate(model, eval_batches, dev, cfg.dtype)
    meter.evaluate(psi_of(initial), initial)
    metrics, step, stopped = initial, 0, False
    order = _batch_cycle(len(train_batches), cfg.seed)
    bar = _progress(cfg)
    with bar as pbar:
        meter.start()
        while step < cfg.max_steps and not stopped:
            batch = _to(train_batches[next(order)], dev)
            with autocast_context(dev, cfg.dtype):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            step += 1
            # Before zero_grad, so that the gradients count in the trainable state they occupy.
            meter.step(examples=_examples_in(batch))
            optimizer.zero_grad(set_to_none=True)
            if pbar is not None:
                pbar.update(1)
                pbar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if step % every == 0 or step == cfg.max_steps:
                meter.pause()
                metrics = evaluate(model, eval_batches, dev, cfg.dtype)
                meter.evaluate(psi_of(metrics), metrics)
                if on_eval is not None:
                    on_eval(step, metrics)
                meter.resume()
                stopped = stopping is not None and stopping.should_stop
        meter.pause()
    meter.close()
    return TrainResult(step, psi_of(metrics), psi_of(initial), metrics, initial, stopped,
                       meter.wall_s / max(step, 1), meter, optimizer)


def _progress(cfg: FinetuneConfig) -> contextlib.AbstractContextManager[Any]:
    if not cfg.progress:
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=cfg.max_steps, desc="finetune", unit="step", file=sys.stderr, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------
# the `blueprint finetune` command


def _label_space(train: Sequence[Any], evals: Sequence[Any]) -> tuple[dict[str, int] | None, int]:
    """(label2id for string labels or None for integer labels, number of classes)."""
    from reference_impl.errors import input_error

    labels = [e.label for e in list(train) + list(evals)]
    if any(v is None for v in labels):
        raise input_error("missing-field", "sequence classification needs a `label` for every training and "
                          "evaluation example")
    if all(isinstance(v, int) for v in labels):
        return None, max(int(v) for v in labels if isinstance(v, int)) + 1
    if all(isinstance(v, str) for v in labels):
        names = sorted({str(v) for v in labels})
        return {n: i for i, n in enumerate(names)}, len(names)
    raise input_error("wrong-type", "labels must be all integers or all strings")


def resolve_task(requested: str, architectures: Sequence[str], labelled: bool) -> str:
    """The task to fine-tune for. "auto": the architecture's own (causal LM or sequence
    classification), else sequence classification when every example has a label. A causal LM
    needs a pretrained language-model head: any other architecture is refused (unsupported-model)."""
    from reference_impl.cli_common import usage
    from reference_impl.errors import input_error
    from reference_impl.losses import task_of_architecture

    arch = architectures[0] if architectures else ""
    own = task_of_architecture(arch)
    if requested == "auto":
        if own in ("causal-lm", "sequence-classification"):
            return own
        if labelled:
            return "sequence-classification"
        raise usage("--task", f"--task auto: architecture {arch or '(none)'!r} has no task of its own and the data "
                              "has no labels; pass --task causal-lm or sequence-classification")
    if requested == "causal-lm" and own != "causal-lm":
        raise input_error("unsupported-model", f"architecture {arch or '(none)'!r} has no pretrained language-model "
                          "head; causal-LM fine-tuning needs a *ForCausalLM model")
    return requested


@dataclass
class Prepared:
    """A loaded model with its data, ready to apply the blueprint to."""

    model: Any
    tokenizer: Any
    task: str
    train_batches: list[dict[str, Any]]
    eval_batches: list[dict[str, Any]]
    notes: dict[str, int]  # truncated / dropped example counts, the sequence length used


def _check_paths(paths: Sequence[Path], out_dir: Path) -> None:
    """Every input a regular file, the output a folder or a new path: before any work."""
    from blueprint_format.errors import BlueprintIOError, make_error
    from blueprint_format.paths import require_regular_input

    for p in paths:
        require_regular_input(p)
    if out_dir.exists() and not out_dir.is_dir():
        raise BlueprintIOError(make_error("not-a-regular-file", f"{out_dir} exists and is not a folder; -o needs a "
                                          "folder or a new path"))


def prepare(model_path: Path, train_path: Path, eval_path: Path, config: FinetuneConfig) -> Prepared:
    """Read the data, load the model for the task, tokenise (cutting and reporting long texts)."""
    from reference_impl.data import read_examples
    from reference_impl.model_loading import (
        architectures_of,
        load_model,
        read_folder_json,
        refuse_remote_code,
    )

    train_ex, eval_ex = read_examples(train_path), read_examples(eval_path)
    refuse_remote_code(model_path, config.trust_remote_code)
    folder_config = read_folder_json(model_path, "config.json") if model_path.is_dir() else None
    archs = architectures_of(folder_config or {}, model_path / "config.json")
    labelled = all(e.label is not None for e in train_ex + eval_ex)
    task = resolve_task(config.task, archs, labelled)
    extra: dict[str, Any] = {}
    if task == "sequence-classification":
        label2id, n_labels = _label_space(train_ex, eval_ex)
        extra["num_labels"] = n_labels
        if label2id is not None:
            extra.update(label2id=label2id, id2label={i: n for n, i in label2id.items()})
    seed_everything(config.seed)
    weights = "bf16" if config.dtype == "bf16" else "fp32"
    loaded = load_model(model_path, task, weights, config.trust_remote_code, model_kwargs=extra)
    model, tok = loaded.model, loaded.tokenizer
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    seq_len, notes = _sequence_length(model, config.seq_len)
    sources = ((train_ex, str(train_path)), (eval_ex, str(eval_path)))
    train_b, eval_b = _batches(sources, tok, model, task, (config.batch_size, seq_len), notes)
    return Prepared(model, tok, task, train_b, eval_b, notes)


def _sequence_length(model: Any, seq_len: int) -> tuple[int, dict[str, int]]:
    """`seq_len`, cut to the model's maximum (and said so)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and 0 < limit < seq_len:
        print(f"finetune: --seq-len {seq_len} exceeds the model's maximum of {limit} tokens; using {limit}",
              file=sys.stderr)
        seq_len = limit
    return seq_len, {"seq_len": seq_len}


def _batches(sources: tuple[tuple[list[Any], str], tuple[list[Any], str]], tok: Any, model: Any, task: str,
             shape: tuple[int, int], notes: dict[str, int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Tokenised training and evaluation batches of `shape` (batch size, sequence length) from the
    (examples, path) `sources`; long texts are cut at the sequence length and counted in `notes`."""
    from reference_impl.data import causal_lm_batches, make_batches
    from reference_impl.errors import input_error

    batch_size, seq_len = shape
    out = []
    for name, (examples, path) in zip(("training", "evaluation"), sources, strict=True):
        if task == "causal-lm":
            made = causal_lm_batches(examples, tok, batch_size, seq_len)
            batches, cut, dropped = made.batches, made.truncated, made.dropped
        else:
            batches = make_batches(examples, tok, model, task, batch_size, seq_len, where=path)
            cut = sum(len(tok(e.text)["input_ids"]) > seq_len for e in examples)
            dropped = 0
        notes[f"{name}_truncated"], notes[f"{name}_dropped"] = int(cut), int(dropped)
        if cut or dropped:
            extra = f"; {dropped} left with no token to predict were dropped" if dropped else ""
            print(f"finetune: {cut} of {len(examples)} {name} examples were cut at {seq_len} tokens{extra}",
                  file=sys.stderr)
        if not batches:
            raise input_error("empty-document", f"{path}: no {name} example is left to train or evaluate on")
        out.append(batches)
    return out[0], out[1]


def _apply(prep: Prepared, bp: Any, blueprint_path: Path, model_path: Path, config: FinetuneConfig,
           dev: torch.device) -> Any:
    """Apply the blueprint: rows/elements from the sidecar, or from the first training batches."""
    from reference_impl.apply import apply_blueprint, sidecar_scores

    scores = (sidecar_scores(bp, blueprint_path.parent, config.granularity)
              if config.use_sidecar and config.granularity != "module" else None)
    apply_cfg = config.apply_config()
    if scores is not None:
        from dataclasses import replace

        apply_cfg = replace(apply_cfg, consume_scores=True)
    return apply_blueprint(
        prep.model, bp, apply_cfg, element_scores=scores,
        local_batches=[_to(b, dev) for b in prep.train_batches[:LOCAL_BATCHES]],
        model_path=model_path if model_path.is_dir() or model_path.suffix == ".safetensors" else None,
    )


def _enable_checkpointing(model: Any) -> None:
    from reference_impl.errors import input_error

    if not getattr(model, "supports_gradient_checkpointing", False):
        raise input_error("unsupported-model", f"{type(model).__name__} does not support activation checkpointing")
    # Non-reentrant: recomputation works although the inputs of frozen layers need no gradient.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def run_finetune(
    model_path: str | Path,
    blueprint_path: str | Path,
    train_path: str | Path,
    eval_path: str | Path,
    out_dir: str | Path,
    config: FinetuneConfig | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Fine-tune a local model on what the blueprint selects; write the results; return the summary.

    Writes into `out_dir`: update.safetensors (the update alone), meter.json (the meter's report),
    summary.json, and with config.save_merged the merged model folder `merged/`. Nothing is
    written when the run is refused. Rows/elements are chosen from the gradients of the first
    LOCAL_BATCHES training batches, or from the blueprint's sidecar with config.use_sidecar.
    """
    from dataclasses import replace

    from blueprint_format.api import load as load_blueprint
    from reference_impl.compute import resolve_device

    cfg = replace(config, **settings) if config is not None else FinetuneConfig(**settings)
    mp, bpp, out = Path(model_path), Path(blueprint_path), Path(out_dir)
    _check_paths([bpp, Path(train_path), Path(eval_path)], out)
    bp = load_blueprint(bpp)
    cfg = cfg.for_blueprint(bp)
    prep = prepare(mp, Path(train_path), Path(eval_path), cfg)
    dev = resolve_device(cfg.device)
    prep.model.to(dev)
    handle = _apply(prep, bp, bpp, mp, cfg, dev)
    if cfg.checkpointing:
        _enable_checkpointing(prep.model)
    stopping = StoppingRule(cfg.eta) if cfg.eta is not None else None
    result = train(prep.model, handle.parameters(), prep.train_batches, prep.eval_batches, cfg, handle=handle,
                   stopping=stopping)
    return _write_outputs(out, mp, prep, handle, result, cfg)


def _write_outputs(out: Path, model_path: Path, prep: Prepared, handle: Any, result: TrainResult,
                   cfg: FinetuneConfig) -> dict[str, Any]:
    """update.safetensors, meter.json, summary.json (atomically) and the merged folder if asked."""
    from blueprint_format.atomic import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    update_bytes = handle.save_update(out / "update.safetensors")
    report = result.meter.report()
    report["selection"] = handle.summary()
    report["task"] = prep.task
    atomic_write_bytes(out / "meter.json", (json.dumps(report, indent=2) + "\n").encode())
    state = handle.trainable_state_bytes(result.optimizer)
    summary: dict[str, Any] = {
        "model": str(model_path), "task": prep.task, "budget": cfg.budget, "granularity": cfg.granularity,
        "dtype": cfg.dtype, "checkpointing": cfg.checkpointing, "steps": result.steps,
        "stopped_early": result.stopped_early, **result.metrics,
        **{f"initial_{k}": v for k, v in result.initial_metrics.items()},
        "trainable_fraction": handle.trainable_fraction, "trainable_parameters": handle.trainable_count,
        "trainable_state_bytes": state["total"], "peak_memory_bytes": int(result.meter.peak_memory_bytes()),
        "step_time_s": result.step_time_s, "flops": report["points"][-1]["gamma"]["flops"],
        "update_bytes": update_bytes, "update": str(out / "update.safetensors"), **prep.notes,
    }
    if cfg.save_merged:
        summary["merged"] = str(_save_merged(handle, prep, out / "merged"))
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _save_merged(handle: Any, prep: Prepared, target: Path) -> Path:
    """The trained model as a plain Hugging Face folder (written beside, then renamed into place)."""
    import shutil
    import tempfile

    model = handle.merge()
    tmp = Path(tempfile.mkdtemp(prefix=".merged-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        prep.tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
