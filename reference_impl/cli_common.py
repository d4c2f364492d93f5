"""Flags shared by the reference implementation's commands (compute, select-data, finetune).

One table, `OPTIONS`, declares each shared flag once: its spellings, its argparse settings and
its help text. A command adds the ones it takes with `add_options(parser, "model", "device", ...)`
and may override a default per command. Everything here follows one convention:

* a mistake in a flag's value or in a combination of flags (unparsable, out of range,
  conflicting, missing) is a `usage-error` located at the flag, exit status 2, one line;
  argparse's own errors take the same path (`blueprint_format.cli`);
* configuration objects validate themselves and raise `reference_impl.config.ConfigError`
  located at a field; `usage_from_config` turns it into the same usage-error naming the flag;
* `--quiet` silences third-party output too (transformers' load reports, progress bars,
  Python warnings): `quiet_output`.

Only the standard library and blueprint_format are imported at module level, so that building
the `blueprint` parser never imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import sys
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blueprint_format.errors import UsageError, usage_error
from blueprint_format.models import NAME_PATTERN, Precision

#: Where a command may run. `auto`: CUDA when a device is available, else the CPU.
DEVICES = ("auto", "cpu", "cuda")
#: Ways to spread a command over the processes torchrun starts (reference_impl.sharded).
DISTRIBUTED = ("fsdp",)
#: Weights dtypes and autocast modes, as the blueprint's `method.precision` records them.
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)

_NAME_RE = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class Option:
    """One shared flag: its spellings, argparse settings and help text. (A command that must
    keep an older spelling working adds it with `add_hidden_alias`.)"""

    flags: tuple[str, ...]
    help: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        """The attribute argparse stores the value in."""
        return str(self.settings.get("dest") or self.flags[-1].lstrip("-").replace("-", "_"))


#: The shared flags and their help text, in one place.
OPTIONS: dict[str, Option] = {
    "model": Option(
        ("--model",),
        "local Hugging Face model folder with safetensors weights (never downloaded; the folder's own "
        "Python code is refused unless --trust-remote-code)",
        {"required": True, "metavar": "FOLDER"},
    ),
    "trust_remote_code": Option(
        ("--trust-remote-code",),
        "allow a model folder whose config names its own Python code (`auto_map`) and RUN that code; "
        "only for folders you trust",
        {"action": "store_true"},
    ),
    "device": Option(
        ("--device",),
        "where to run: auto (CUDA when available, else CPU), cpu or cuda",
        {"default": "auto", "choices": DEVICES},
    ),
    "batch_size": Option(("--batch-size",), "examples per batch (at least 1)", {"type": int, "default": 16,
                                                                                 "metavar": "N"}),
    "seq_len": Option(("--seq-len",), "truncate examples to N tokens (at least 1)", {"type": int, "metavar": "N"}),
    "dtype": Option(
        ("--dtype",),
        "weights dtype (fp32, bf16, fp16, fp64) or autocast mode (bf16-autocast, fp16-autocast)",
        {"default": "fp32", "choices": PRECISIONS},
    ),
    "seed": Option(("--seed",), "random seed (a non-negative integer)", {"type": int, "default": 0, "metavar": "N"}),
    "weight": Option(
        ("--weight",),
        "weight of a domain, as NAME=W with W a finite number >= 0; repeat for each domain; the weights "
        "are scaled to sum to 1",
        {"action": "append", "default": [], "metavar": "NAME=W"},
    ),
    "quiet": Option(
        ("--quiet",),
        "print nothing but errors: no progress bars, summaries, warnings or library messages",
        {"action": "store_true"},
    ),
    "output": Option(("-o", "--output"), "file to write", {"required": True, "metavar": "OUT"}),
    "distributed": Option(
        ("--distributed",),
        "shard the model with FSDP2 over the processes torchrun starts: torchrun --nproc_per_node N "
        "$(which blueprint) COMMAND ... --distributed fsdp; each process takes every N-th batch, rank 0 writes",
        {"choices": DISTRIBUTED, "default": None},
    ),
}


def add_options(
    parser: argparse.ArgumentParser, *names: str, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> None:
    """Add the shared flags `names` (keys of OPTIONS) to `parser`.

    `overrides` maps a name to argparse settings that replace the table's for this command (a
    default, `required`, a more specific `help`).
    """
    for name in names:
        option = OPTIONS[name]
        settings = {**option.settings, "help": option.help, **(overrides or {}).get(name, {})}
        parser.add_argument(*option.flags, **settings)


def add_hidden_alias(parser: argparse.ArgumentParser, alias: str, name: str) -> None:
    """Accept `alias` as an unlisted older spelling of the shared flag `name` on this command."""
    option = OPTIONS[name]
    settings = {**option.settings, "dest": option.dest, "help": argparse.SUPPRESS}
    settings.pop("required", None)
    parser.add_argument(alias, **settings)


def command_parser(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    description: str,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """Add the plugin command `name`, with the one-line help `blueprint --help` lists for it
    (blueprint_format.cli.PLUGIN_COMMANDS holds it, so it is written once)."""
    from blueprint_format.cli import command_help

    return subparsers.add_parser(name, help=command_help(name), description=description, epilog=epilog)  # type: ignore[no-any-return]


def flag_of(field_name: str) -> str:
    """The flag spelling of a configuration field (`batch_size` -> `--batch-size`)."""
    for option in OPTIONS.values():
        if option.dest == field_name:
            return option.flags[-1]
    return "--" + field_name.replace("_", "-")


def usage(flag: str, message: str) -> UsageError:
    """The usage-error of a flag mistake: located at `flag`, exit status 2."""
    return usage_error(message, flag)


@contextlib.contextmanager
def usage_from_config(flags: Mapping[str, str] | None = None) -> Iterator[None]:
    """Turn a ConfigError raised inside the block into a usage-error that names the flag.

    `flags` maps configuration field names to flag spellings where `flag_of` would guess wrong
    (e.g. {"precision": "--dtype"}).
    """
    from reference_impl.config import ConfigError

    try:
        yield
    except ConfigError as exc:
        field_name = exc.field
        base = field_name.split("[", 1)[0]
        flag = (flags or {}).get(base) or flag_of(base)
        message = exc.issues[0].message
        if message.startswith(field_name):
            message = flag + message[len(base):]
        raise usage(flag, message) from None


def parse_weights(items: Sequence[str], flag: str = "--weight") -> dict[str, float] | None:
    """`NAME=W` items -> {name: W} scaled to sum to 1, or None when no item is given.

    Every mistake is a usage-error naming `flag`: a missing `=`, a name that is not a valid
    domain name, a repeated name, a W that is not a finite number >= 0, all weights zero.
    Huge weights (1e308 twice) are scaled without overflow: 0.5 and 0.5.
    """
    from reference_impl.config import normalised_weights

    if not items:
        return None
    raw: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not _NAME_RE.match(name):
            raise usage(flag, f"{flag} {item!r}: expected NAME=W with NAME a domain name (letters, digits, "
                              "'_', '-', '.', at most 64) and W a number")
        if name in raw:
            raise usage(flag, f"{flag}: domain {name!r} is given twice")
        try:
            w = float(value)
        except ValueError:
            raise usage(flag, f"{flag} {item!r}: {value!r} is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise usage(flag, f"{flag} {item!r}: the weight must be a finite number >= 0")
        raw[name] = w
    with usage_from_config({"weights": flag}):
        return normalised_weights("weights", raw)


def check_weight_names(weights: Mapping[str, float] | None, names: Sequence[str], flag: str = "--weight") -> None:
    """Refuse weights for domains that are not among `names` (usage-error at `flag`)."""
    unknown = sorted(set(weights or {}) - set(names))
    if unknown:
        raise usage(flag, f"{flag}: {', '.join(map(repr, unknown))} is not a domain of this run "
                          f"(domains: {', '.join(names)})")


def check_output_paths(*paths: Path) -> None:
    """Refuse outputs that cannot be written, before any work: a missing folder (io-error), or
    a FIFO, device, symlink or folder in the file's place (not-a-regular-file); exit 2."""
    from blueprint_format.errors import BlueprintIOError, make_error
    from blueprint_format.paths import require_output_target

    for path in paths:
        if str(path.parent) and not path.parent.is_dir():
            raise BlueprintIOError(make_error("io-error", f"cannot write {path}: the folder {path.parent} does not exist"))
        require_output_target(path)


def check_device(device: str) -> None:
    """Refuse `--device cuda` without a CUDA device (before any model is loaded). Imports torch."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise usage("--device", "--device cuda: no CUDA device is available (use --device cpu or auto)")


_QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
_QUIET_LOGGERS = ("transformers", "huggingface_hub", "torch", "accelerate", "safetensors")


def _library_switches(quiet: bool) -> None:
    """Set transformers' and huggingface_hub's verbosity and progress bars, where imported (never
    imports them: select-data from a scores file runs without torch or transformers)."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(logging.ERROR if quiet else logging.WARNING)
        if quiet:
            hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        else:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    if "huggingface_hub" in sys.modules:
        import importlib

        # The submodule, not the `tqdm` class that huggingface_hub.utils re-exports under that name.
        hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")
        if quiet:
            hub_tqdm.disable_progress_bars()
        else:
            hub_tqdm.enable_progress_bars()


@contextlib.contextmanager
def quiet_output(enabled: bool = True) -> Iterator[None]:
    """Within the block, libraries print nothing: transformers' and huggingface_hub's logs, load
    reports and progress bars, tqdm bars and Python warnings (what `--quiet` promises). The
    previous settings come back afterwards, so that in-process callers (tests) are unaffected."""
    if not enabled:
        yield
        return
    saved_env = {k: os.environ.get(k) for k in _QUIET_ENV}
    saved_levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    os.environ.update(_QUIET_ENV)  # read by libraries imported inside the block
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():  # also silences the libraries' remarks while switching back
        warnings.simplefilter("ignore")
        try:
            _library_switches(quiet=True)
            yield
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            for name, level in saved_levels.items():
                logging.getLogger(name).setLevel(level)
            _library_switches(quiet=False)
