"""Load a local Hugging Face model folder for the commands: safetensors only, offline, and never
the folder's own code.

A folder whose config.json or tokenizer_config.json has an `auto_map` names Python files of its
own that transformers would import (and so run) to build the model or tokenizer; transformers
asks on stdin whether to run them when it is not told. The commands never prompt: such a folder
is refused with `untrusted-code` unless the caller passes `trust_remote_code=True`
(`--trust-remote-code`), and transformers always receives an explicit `trust_remote_code`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blueprint_format.binding import TensorInfo
from reference_impl.cli_common import usage
from reference_impl.errors import input_error
from reference_impl.losses import task_of_architecture

#: Files of a model folder that may name the folder's own code (`auto_map`).
CODE_NAMING_FILES = ("config.json", "tokenizer_config.json")
#: A config file larger than this is refused before it is read (real ones are a few kB).
MAX_CONFIG_BYTES = 16 * 1024 * 1024
#: Tasks the commands know, and the transformers Auto class that loads each.
TASK_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "contrastive": "AutoModel",
}
_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp64": "float64"}  # others: fp32 weights


@dataclass(frozen=True)
class LoadedModel:
    """A model, its tokenizer and the task (loss family) it is used for."""

    model: Any
    tokenizer: Any
    task: str


def read_folder_json(folder: Path, name: str) -> dict[str, Any] | None:
    """The JSON object in `folder/name`, or None when the file does not exist.

    Refuses (unreadable-model) a file that is too large, not JSON, nested too deep, or not an
    object; reading never follows anything but a regular file.
    """
    from blueprint_format.paths import require_regular_input

    path = folder / name
    if not path.exists():
        return None
    require_regular_input(path)
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise input_error("unreadable-model", f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise input_error("io-error", f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:  # ValueError covers UnicodeDecodeError and huge integers
        raise input_error("unreadable-model", f"{path}: not a JSON document ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise input_error("unreadable-model", f"{path}: expected a JSON object")
    return doc


def refuse_remote_code(folder: Path, trust_remote_code: bool = False) -> None:
    """Refuse a folder that names its own code (`auto_map`) unless `trust_remote_code`."""
    if trust_remote_code:
        return
    for name in CODE_NAMING_FILES:
        doc = read_folder_json(folder, name)
        if doc is not None and doc.get("auto_map"):
            raise input_error(
                "untrusted-code",
                f"{folder / name} names Python code of the model folder (auto_map); it is not run. Pass "
                "--trust-remote-code (trust_remote_code=True) only if you trust that folder's code",
            )


def architectures_of(config: dict[str, Any], where: Path) -> list[str]:
    """config.json's `architectures` (class names), checked to be a list of strings."""
    archs = config.get("architectures")
    if archs is None:
        return []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise input_error("unreadable-model", f"{where}: `architectures` must be a list of class names (strings)")
    return archs


def resolve_task(requested: str, architectures: list[str]) -> str:
    """The task to load for: `requested`, or with "auto" the one the architecture's name says.

    A base model (e.g. BertModel) has no loss of its own: the caller must choose one, which is a
    usage-error at --loss."""
    if requested != "auto":
        return requested
    arch = architectures[0] if architectures else ""
    task = task_of_architecture(arch)
    if task not in TASK_CLASSES:
        raise usage(
            "--loss",
            f"--loss auto: cannot tell the loss of architecture {arch or '(none)'!r}; pass --loss causal-lm, "
            "masked-lm, sequence-classification or contrastive (base encoders: contrastive with .jsonl pairs)",
        )
    return task


def model_folder_tensors(model_path: Path) -> list[TensorInfo]:
    """The tensor inventory of a local model folder, from its safetensors headers only.

    Refuses a path that is not a folder (io-error) and a folder without readable safetensors
    weights (unreadable-model, with a hint when it holds pickle checkpoints instead).
    """
    from blueprint_format.binding import model_tensors
    from blueprint_format.errors import BlueprintError

    if not model_path.is_dir():
        raise input_error("io-error", f"{model_path}: not a model folder")
    try:
        return model_tensors(model_path)
    except (BlueprintError, OSError, ValueError) as exc:
        code = getattr(exc, "code", "unreadable-model")
        has_pickle = any(model_path.glob("*.bin")) or any(model_path.glob("*.pt"))
        hint = " (pickle checkpoints are refused: convert the weights to safetensors)" if has_pickle else ""
        raise input_error(code if code == "header-too-large" else "unreadable-model", f"{exc}{hint}") from None


def load_model(
    path: Path, task: str = "auto", dtype: str = "fp32", trust_remote_code: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> LoadedModel:
    """Model, tokenizer and task from a local folder: safetensors weights only (no pickle), no
    network, and the folder's own code only with `trust_remote_code`. The tokenizer gets its eos
    token as pad token when it has none. `model_kwargs` go to from_pretrained (e.g. num_labels
    and label2id for a new classification head)."""
    import torch
    import transformers

    refuse_remote_code(path, trust_remote_code)
    config = read_folder_json(path, "config.json")
    if config is None:
        raise input_error("unreadable-model", f"{path}: no config.json")
    task = resolve_task(task, architectures_of(config, path / "config.json"))
    auto_class = getattr(transformers, TASK_CLASSES[task])
    torch_dtype = getattr(torch, _DTYPES.get(dtype, "float32"))
    options = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    try:
        model = auto_class.from_pretrained(path, use_safetensors=True, dtype=torch_dtype, **options,
                                           **(model_kwargs or {}))
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, **options)
    except Exception as exc:  # transformers raises many kinds for a bad folder
        reason = " ".join(str(exc).split())[:500]  # one line, whatever transformers wrote
        raise input_error("unreadable-model", f"{path}: cannot load the model or tokenizer: {reason}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise input_error("unreadable-model", f"{path}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, task)
