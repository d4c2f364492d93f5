"""`blueprint embed | extract | strip | push | pull`: the converters' subcommands.

Loaded by name by `blueprint_format.cli`; only argparse and the standard library are imported at
module level so that building the parser stays fast. Handlers raise BlueprintError subclasses for
bad input (the main CLI prints `error: <code> at <location>: <message>` and exits 1, or 2 for I/O).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from blueprint_format.cli import command_help


def _byte_count(text: str) -> int:
    """A non-negative byte count, optionally with a K/M suffix (powers of 1024)."""
    scale = 1
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    if t.endswith("K"):
        scale, t = 1024, t[:-1]
    elif t.endswith("M"):
        scale, t = 1024 * 1024, t[:-1]
    try:
        value = int(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _existing(path: str) -> Path:
    from blueprint_format.errors import BlueprintIOError, make_error

    p = Path(path)
    if not p.exists():
        raise BlueprintIOError(make_error("io-error", f"{p}: no such file or folder"))
    return p


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def cmd_embed(args: argparse.Namespace) -> int:
    """Validate BLUEPRINT, check it binds to TARGET's tensors, embed it atomically."""
    from blueprint_format import digest, load
    from converters.registry import embed, kind_of

    bp = load(args.blueprint)
    target = _existing(args.target)
    out = Path(args.output) if args.output else None
    result = embed(
        bp,
        target,
        out,
        force=args.force,
        reserve=args.reserve,
        in_place=args.in_place and not args.no_in_place,
        into_weights=args.into_weights,
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        _print_json({"container": kind_of(target), "digest": digest(bp), **result.to_json()})
    else:
        how = " in place" if result.in_place else ""
        replacing = f", replacing {result.replaced}" if result.replaced and result.replaced != digest(bp) else ""
        print(f"embedded {digest(bp)} into {result.path} ({kind_of(target)}{how}{replacing})")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    """Print (or write) the canonical JSON of TARGET's blueprint; exit 1 when it holds none."""
    from blueprint_format import atomic_write_bytes, digest
    from blueprint_format.errors import ContainerError, make_error
    from converters.base import canonical_text
    from converters.registry import extract, kind_of

    target = _existing(args.target)
    bp = extract(target)
    if bp is None:
        raise ContainerError(make_error("no-blueprint", f"{target} holds no blueprint"))
    data = canonical_text(bp).encode("utf-8")
    if args.output:
        atomic_write_bytes(args.output, data)
    if args.json:
        _print_json(
            {
                "path": str(target),
                "container": kind_of(target),
                "digest": digest(bp),
                "spec_version": bp.spec_version,
                "model": bp.model.name,
                "modules": len(bp.modules),
                **({"output": args.output} if args.output else {}),
            }
        )
    elif not args.output:
        sys.stdout.buffer.write(data + b"\n")
        sys.stdout.flush()
    return 0


def cmd_strip(args: argparse.Namespace) -> int:
    """Remove the blueprint from TARGET (or write a stripped copy to OUT)."""
    from converters.registry import kind_of, strip

    target = _existing(args.target)
    out = Path(args.output) if args.output else None
    result = strip(target, out, in_place=args.in_place and not args.no_in_place)
    if args.json:
        _print_json({"container": kind_of(target), **result.to_json()})
    elif result.changed:
        print(f"removed the blueprint from {target}" + (f" (written to {out})" if out else ""))
    else:
        print(f"{target} holds no blueprint; nothing removed", file=sys.stderr)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """Upload a model folder's blueprint.json and README.md to the Hub."""
    from converters.hub import push

    folder = _existing(args.folder)
    uploaded = push(folder, args.repo_id, repo_type=args.repo_type, revision=args.revision)
    print(f"uploaded {', '.join(uploaded)} to {args.repo_id}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    """Fetch a repository's blueprint (blueprint.json or card) and print or write its canonical JSON."""
    from blueprint_format import atomic_write_bytes
    from blueprint_format.errors import ContainerError, make_error
    from converters.base import canonical_text
    from converters.hub import pull

    bp = pull(args.repo, repo_type=args.repo_type, revision=args.revision, local_files_only=args.offline)
    if bp is None:
        raise ContainerError(make_error("no-blueprint", f"{args.repo} publishes no blueprint"))
    if args.output:
        atomic_write_bytes(args.output, canonical_text(bp).encode("utf-8"))
    else:
        sys.stdout.buffer.write(canonical_text(bp).encode("utf-8") + b"\n")
        sys.stdout.flush()
    return 0


def _in_place_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--in-place",
        action="store_true",
        help="safetensors: overwrite only the header bytes when the new header fits (fast for large "
        "files). RISK: not crash-safe - a crash or kill during the write leaves an unreadable file, "
        "and programs reading the file meanwhile may see a torn header",
    )
    p.add_argument(
        "--no-in-place",
        action="store_true",
        help="safetensors: rewrite via a temp file and rename (the default; overrides --in-place)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add embed, extract, strip, push and pull to the `blueprint` command."""
    p = subparsers.add_parser(
        "embed",
        help=command_help("embed"),
        description=(
            "Validate BLUEPRINT, check that it was made for TARGET's model (structure digest and "
            "module names, "
            "where the container lists its tensors), and embed it atomically: safetensors header metadata, "
            "ONNX metadata_props, a PyTorch checkpoint key, a model card (README.md plus blueprint.json "
            "beside "
            "it) or a model folder. Without -o, TARGET is updated: by writing a new file and renaming "
            "it over TARGET, so that a crash or a kill at any moment leaves the old or the new file, "
            "never a broken one. Concurrent embeds into one folder are applied one after the other."
        ),
    )
    p.add_argument("blueprint", metavar="BLUEPRINT", help="blueprint JSON file")
    p.add_argument("target", metavar="TARGET", help="model file, README.md or model folder")
    p.add_argument("-o", "--output", metavar="OUT", help="write the result here instead of updating TARGET")
    p.add_argument("--force", action="store_true", help="embed even if the blueprint does not bind (warns)")
    p.add_argument(
        "--reserve",
        type=_byte_count,
        default=0,
        metavar="BYTES",
        help="safetensors: leave at least BYTES of header padding so later updates are in place",
    )
    _in_place_flags(p)
    p.add_argument(
        "--into-weights",
        action="store_true",
        help="model folder: also embed into every safetensors file's header",
    )
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(handler=cmd_embed)

    p = subparsers.add_parser(
        "extract",
        help=command_help("extract"),
        description="Print TARGET's blueprint as canonical JSON (or write it to OUT). Exit 1 when none.",
    )
    p.add_argument("target", metavar="TARGET")
    p.add_argument("-o", "--output", metavar="OUT", help="write the canonical JSON here")
    p.add_argument("--json", action="store_true", help="print a summary (digest, container, ...) instead")
    p.set_defaults(handler=cmd_extract)

    p = subparsers.add_parser(
        "strip",
        help=command_help("strip"),
        description="Remove TARGET's blueprint, keeping everything else. Without -o, TARGET is updated.",
    )
    p.add_argument("target", metavar="TARGET")
    p.add_argument("-o", "--output", metavar="OUT", help="write the stripped result here instead")
    _in_place_flags(p)
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(handler=cmd_strip)

    p = subparsers.add_parser("push", help=command_help("push"))
    p.add_argument("folder", metavar="FOLDER")
    p.add_argument("repo_id", metavar="REPO_ID")
    p.add_argument("--repo-type", default="model", choices=["model", "dataset", "space"])
    p.add_argument("--revision", default=None)
    p.set_defaults(handler=cmd_push)

    p = subparsers.add_parser("pull", help=command_help("pull"))
    p.add_argument("repo", metavar="REPO", help="repository id, or a local model folder")
    p.add_argument("-o", "--output", metavar="OUT")
    p.add_argument("--repo-type", default="model", choices=["model", "dataset", "space"])
    p.add_argument("--revision", default=None)
    p.add_argument("--offline", action="store_true", help="use only the local Hugging Face cache")
    p.set_defaults(handler=cmd_pull)
