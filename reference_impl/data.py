"""Calibration data files and their batches for Hugging Face models.

Files: `.txt` (one example per line; blank lines are skipped) or `.jsonl` (one JSON object per
line with a `text` string, a `label` (integer, or a string in the model's label2id) for sequence
classification, and a `pair` string for the contrastive loss; or, for causal-LM fine-tuning, a
`prompt` and a `response` string instead of `text`, the loss then counting the response's tokens
only). Bytes must be UTF-8. Examples keep their file order unless shuffled with a seed.
"""

from __future__ import annotations

import inspect
import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blueprint_format.limits import MAX_SAFE_INTEGER
from blueprint_format.models import NAME_PATTERN
from reference_impl.errors import input_error

NAME_RE = re.compile(NAME_PATTERN)
#: Calibration files larger than this are refused before reading (they would not fit a blueprint run).
MAX_DATA_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Example:
    """One calibration example."""

    text: str
    label: int | str | None = None
    pair: str | None = None
    prompt: str | None = None  # prompt/response examples: `text` is prompt + response

    @property
    def fingerprint_text(self) -> str:
        """The text the data fingerprint covers (a pair's two texts joined by a tab)."""
        return self.text if self.pair is None else f"{self.text}\t{self.pair}"


def parse_data_arg(arg: str) -> tuple[str, Path]:
    """`DOMAIN=FILE` or `FILE` (domain = the file's stem) -> (domain, path)."""
    if "=" in arg:
        name, _, file = arg.partition("=")
        if NAME_RE.match(name):
            return name, Path(file)
    path = Path(arg)
    name = path.stem
    if not NAME_RE.match(name):
        from blueprint_format.errors import usage_error

        raise usage_error(
            f"--data {arg}: cannot use {name!r} as a domain name; give one as DOMAIN=FILE "
            "(letters, digits, '_', '-', '.', at most 64)",
            "--data",
        )
    return name, path


def read_examples(path: str | Path) -> list[Example]:
    """Examples of a .txt or .jsonl file. Raises ComputeInputError for unreadable, non-UTF-8 or
    empty files, and BlueprintIOError (not-a-regular-file) for a FIFO, device or folder, which is
    refused before it is opened (reading a FIFO would block)."""
    from blueprint_format.paths import require_regular_input

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise input_error("io-error", f"{p}: calibration data must be a .txt or .jsonl file")
    require_regular_input(p)
    try:
        size = p.stat().st_size
        if size > MAX_DATA_BYTES:
            raise input_error("too-large", f"{p}: {size} bytes exceeds the {MAX_DATA_BYTES}-byte limit")
        raw = p.read_bytes()
    except OSError as exc:
        raise input_error("io-error", f"cannot read {p}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = raw[: exc.start].count(b"\n") + 1
        raise input_error(
            "not-utf8", f"{p}: not UTF-8 at byte offset {exc.start} (line {bad_line}): {exc.reason}"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    examples: list[Example] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if suffix == ".txt":
            examples.append(Example(line))
            continue
        obj = _json_line(line, f"{p}: line {lineno}")
        if isinstance(obj, dict) and ("prompt" in obj or "response" in obj):
            examples.append(_prompt_response(obj, f"{p}: line {lineno}"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise input_error("missing-field", f"{p}: line {lineno}: expected an object with a string `text`")
        label = _label(obj.get("label"), f"{p}: line {lineno}")
        pair = obj.get("pair")
        if pair is not None and not isinstance(pair, str):
            raise input_error("wrong-type", f"{p}: line {lineno}: `pair` must be a string")
        examples.append(Example(obj["text"], label, pair))
    if not examples:
        raise input_error("empty-document", f"{p}: no examples (the file is empty or blank)")
    return examples


def _prompt_response(obj: dict[str, Any], where: str) -> Example:
    """A prompt/response example: both strings, the response not empty; no `text` beside them."""
    for name in ("prompt", "response"):
        if name not in obj:
            raise input_error("missing-field", f"{where}: a `prompt` needs a `response` and the reverse; `{name}` "
                              "is missing")
        if not isinstance(obj[name], str):
            raise input_error("wrong-type", f"{where}: `{name}` must be a string")
    if "text" in obj:
        raise input_error("schema-violation", f"{where}: give either `text` or `prompt` and `response`, not both")
    if not obj["response"]:
        raise input_error("missing-field", f"{where}: `response` is empty (the loss counts its tokens only)")
    return Example(obj["prompt"] + obj["response"], _label(obj.get("label"), where), prompt=obj["prompt"])


def _json_line(line: str, where: str) -> Any:
    """One .jsonl line parsed; refuses malformed JSON (parse-error), nesting deeper than the
    parser's recursion limit (too-deep: the C parser stops cleanly with RecursionError) and
    integers longer than Python converts (parse-error)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise input_error("parse-error", f"{where}: not JSON ({exc.msg})") from None
    except RecursionError:
        raise input_error("too-deep", f"{where}: nested too deeply for an example") from None
    except ValueError as exc:  # e.g. an integer beyond Python's 4,300-digit conversion limit
        reason = str(exc).split(";")[0][:120]
        raise input_error("parse-error", f"{where}: not JSON this reader accepts ({reason})") from None


def _label(label: Any, where: str) -> int | str | None:
    """A `label`: absent, a string, or an integer in [0, 2**53 - 1]."""
    if label is None or isinstance(label, str):
        return label
    if isinstance(label, bool) or not isinstance(label, int):
        raise input_error("wrong-type", f"{where}: `label` must be an integer or a string")
    if not 0 <= label <= MAX_SAFE_INTEGER:
        raise input_error("out-of-range", f"{where}: an integer `label` must lie in [0, {MAX_SAFE_INTEGER}]")
    return label


def select_examples(
    examples: list[Example], batch_size: int, max_batches: int | None, shuffle: bool, seed: int
) -> list[Example]:
    """The examples actually used: shuffled with `seed` if asked, cut to max_batches batches."""
    chosen = list(examples)
    if shuffle:
        random.Random(seed).shuffle(chosen)
    if max_batches is not None:
        chosen = chosen[: max_batches * batch_size]
    return chosen


def _forward_keys(model: Any) -> set[str] | None:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def _tokenize(tokenizer: Any, texts: list[str], seq_len: int, keys: set[str] | None) -> dict[str, Any]:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=seq_len, return_tensors="pt")
    return {k: v for k, v in enc.items() if keys is None or k in keys}


def _label_id(label: int | str | None, label2id: Mapping[str, int], where: str) -> int:
    if label is None:
        raise input_error("missing-field", f"{where}: sequence classification needs a `label` for every example")
    if isinstance(label, int):
        return label
    if label in label2id:
        return int(label2id[label])
    raise input_error("bad-enum", f"{where}: label {label!r} is not one of the model's labels {sorted(label2id)}")


def make_batches(
    examples: list[Example],
    tokenizer: Any,
    model: Any,
    task: str,
    batch_size: int,
    seq_len: int,
    where: str = "data",
) -> list[dict[str, Any]]:
    """Tokenised batches (CPU tensors) for `task` ("causal-lm", "masked-lm",
    "sequence-classification" or "contrastive")."""
    import torch

    keys = _forward_keys(model)
    config = getattr(model, "config", None)
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    num_labels = getattr(config, "num_labels", None)
    batches: list[dict[str, Any]] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        if task == "contrastive":
            missing = [i for i, e in enumerate(chunk) if e.pair is None]
            if missing:
                raise input_error(
                    "missing-field", f"{where}: the contrastive loss needs a `pair` text for every example (.jsonl)"
                )
            batches.append({
                "anchor": _tokenize(tokenizer, [e.text for e in chunk], seq_len, keys),
                "positive": _tokenize(tokenizer, [e.pair or "" for e in chunk], seq_len, keys),
            })
            continue
        batch = _tokenize(tokenizer, [e.text for e in chunk], seq_len, keys)
        if task == "sequence-classification":
            labels = [_label_id(e.label, label2id, where) for e in chunk]
            if num_labels is not None and any(not 0 <= v < int(num_labels) for v in labels):
                raise input_error("out-of-range", f"{where}: labels must lie in [0, {num_labels})")
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        batches.append(batch)
    return batches


@dataclass
class CausalBatches:
    """Causal-LM batches with labels (-100 where no loss is taken), and what tokenising cut."""

    batches: list[dict[str, Any]]
    truncated: int = 0  # examples longer than seq_len tokens (cut at seq_len)
    dropped: int = 0  # examples left without a response token after the cut (not used)
    tokens: int = 0  # tokens that carry loss


def _causal_ids(tokenizer: Any, example: Example) -> tuple[list[int], int]:
    """(token ids, number of leading prompt tokens that carry no loss) of one example.

    Plain text: the tokenizer's encoding (with its special tokens), every token predicted. Prompt
    and response: the prompt encoded as a text, the response appended without special tokens and
    closed by the end-of-sequence token, so that the model learns where a response ends.
    """
    if example.prompt is None:
        return list(tokenizer(example.text)["input_ids"]), 0
    prompt = list(tokenizer(example.prompt)["input_ids"]) if example.prompt else []
    response = list(tokenizer(example.text[len(example.prompt):], add_special_tokens=False)["input_ids"])
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        response.append(int(eos))
    return prompt + response, len(prompt)


def causal_lm_batches(examples: list[Example], tokenizer: Any, batch_size: int, seq_len: int) -> CausalBatches:
    """Right-padded batches of input_ids, attention_mask and labels for causal-LM fine-tuning.

    Labels equal input_ids except -100 on padding and on prompt tokens (the model shifts them by
    one to predict each next token). Examples longer than `seq_len` tokens are cut there and
    counted; one whose response is cut away entirely is dropped and counted.
    """
    import torch

    from reference_impl.losses import IGNORE_INDEX, response_only_labels

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows: list[tuple[list[int], int]] = []
    out = CausalBatches([])
    for e in examples:
        ids, n_prompt = _causal_ids(tokenizer, e)
        if len(ids) > seq_len:
            out.truncated += 1
            ids = ids[:seq_len]
        if len(ids) - max(n_prompt, 1) < 1:
            out.dropped += 1  # no token left to predict (the first token has no context)
            continue
        rows.append((ids, n_prompt))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (ids, _) in enumerate(chunk):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, : len(ids)] = 1
        labels = response_only_labels(input_ids, mask, torch.tensor([n for _, n in chunk], dtype=torch.long))
        out.tokens += int((labels[:, 1:] != IGNORE_INDEX).sum())
        out.batches.append({"input_ids": input_ids, "attention_mask": mask, "labels": labels})
    return out
