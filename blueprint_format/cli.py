"""The `blueprint` command line.

Core commands (validate, show, schema, digest, codes) live here. Commands that need heavy libraries
come from plugin modules named in PLUGINS, imported by name only when the parser is built, so this
package never imports torch, onnx or safetensors itself. A plugin exposes
`register(subparsers) -> None` and sets `handler(args) -> int` on each parser it adds.

Exit status: 0 ok/valid, 1 invalid input, 2 usage or I/O error. Bad input never prints a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

from blueprint_format._version import SPEC_VERSION, __version__
from blueprint_format.errors import (
    ERROR_CODES,
    BlueprintError,
    BlueprintIOError,
    Issue,
    make_error,
    usage_error,
)

#: Modules that add subcommands. Missing ones (optional parts not installed) are skipped.
PLUGINS = ("converters.cli", "reference_impl.compute_cli", "reference_impl.finetune_cli", "reference_impl.select_cli")
#: Plugin commands known up front, so `--help` lists them and `blueprint validate` never imports
#: a plugin (importing reference_impl costs seconds of torch start-up).
PLUGIN_COMMANDS: dict[str, tuple[str, str]] = {
    "embed": ("converters.cli", "embed a blueprint into a model file, card or folder"),
    "extract": ("converters.cli", "print the blueprint held by a model file, card or folder"),
    "strip": ("converters.cli", "remove the blueprint from a model file, card or folder"),
    "push": ("converters.cli", "upload a model folder's blueprint.json and README.md to the Hugging Face Hub"),
    "pull": ("converters.cli", "fetch a Hub repository's blueprint (or a local folder's)"),
    "compute": ("reference_impl.compute_cli", "compute a blueprint from a model and calibration data (needs torch)"),
    "finetune": ("reference_impl.finetune_cli", "fine-tune only what a blueprint recommends (needs torch)"),
    "select-data": (
        "reference_impl.select_cli",
        "keep the training examples with the largest gradient norms (needs torch)",
    ),
}
CORE_COMMANDS = ("validate", "show", "schema", "digest", "codes", "diff")


def command_help(command: str) -> str:
    """The one-line help of a plugin command, as `blueprint --help` lists it (plugins pass it to
    add_parser, so that it is written once)."""
    return PLUGIN_COMMANDS[command][1]


EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _file_report(path: str, against: str | None) -> tuple[dict[str, Any], int]:
    """Validate one file; return its report and the exit status it implies."""
    from blueprint_format.binding import check_binding, model_tensors
    from blueprint_format.jsonio import read_document
    from blueprint_format.validator import check_document

    status = EXIT_OK
    issues: list[Issue]
    try:
        doc = read_document(path)
        issues, bp = check_document(doc, parsed=True)
        if bp is not None and against is not None:
            issues += check_binding(bp, model_tensors(against))
    except BlueprintIOError as exc:
        issues, status = exc.issues, EXIT_USAGE
    except BlueprintError as exc:
        issues = exc.issues
    errors = [i for i in issues if i.is_error]
    if errors and status == EXIT_OK:
        status = EXIT_INVALID
    report = {
        "path": path,
        "valid": not errors,
        "errors": [_issue_json(i) for i in errors],
        "warnings": [_issue_json(i) for i in issues if not i.is_error],
    }
    return report, status


def _issue_json(issue: Issue) -> dict[str, Any]:
    out: dict[str, Any] = {"code": issue.code, "path": issue.path, "message": issue.message}
    if issue.line is not None:
        out["line"], out["column"] = issue.line, issue.column
    return out


def cmd_validate(args: argparse.Namespace) -> int:
    reports, worst = [], EXIT_OK
    for path in args.paths:
        report, status = _file_report(path, args.against)
        reports.append(report)
        worst = max(worst, status)
    if args.json:
        _print_json(reports)
        return worst
    for report in reports:
        verdict = "valid" if report["valid"] else f"INVALID ({len(report['errors'])} error(s))"
        print(f"{report['path']}: {verdict}")
        for kind in ("errors", "warnings"):
            for item in report[kind]:
                where = item["path"] or "/"
                if "line" in item:
                    where = f"line {item['line']} column {item['column']}"
                label = "error" if kind == "errors" else "warning"
                print(f"  {label}: {item['code']} at {where}: {item['message']}")
    if worst == EXIT_INVALID and not args.json:
        print("See the error-code table in spec/v1/SPEC.md or run `blueprint codes`.", file=sys.stderr)
    return worst


def cmd_show(args: argparse.Namespace) -> int:
    from blueprint_format.api import load
    from blueprint_format.render import render_json, render_text

    if args.top < 0:
        raise usage_error(f"--top must be 0 (all) or a positive number of modules, got {args.top}", "--top")
    bp = load(args.path)
    if args.json:
        _print_json(render_json(bp, args.path))
    else:
        print(render_text(bp, args.path, top=args.top or None))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from blueprint_format.schema import schema_path, schema_text

    if args.path:
        print(schema_path())
    else:
        sys.stdout.write(schema_text())
    return EXIT_OK


def cmd_digest(args: argparse.Namespace) -> int:
    from blueprint_format.api import digest, dumps, load

    bp = load(args.path)
    if args.canonical:
        sys.stdout.buffer.write(dumps(bp))
        sys.stdout.flush()
    else:
        print(digest(bp))
    return EXIT_OK


def cmd_codes(args: argparse.Namespace) -> int:
    rows = [{"code": c.code, "layer": c.layer, "meaning": c.summary} for c in ERROR_CODES.values()]
    if args.json:
        _print_json(rows)
        return EXIT_OK
    width = max(len(r["code"]) for r in rows)
    for r in rows:
        print(f"{r['code']:<{width}}  {r['layer']:<9}  {r['meaning']}")
    return EXIT_OK


def _flag_in(message: str) -> str:
    """The flag an argparse error message is about (its long spelling), or "" when none."""
    match = re.match(r"argument ([^:\s]+)", message) or re.search(r"required: ([^,\s]+)", message)
    if match:
        return _long_spelling(match.group(1))
    flags = re.findall(r"(?<![\w/-])(--?[A-Za-z][\w-]*(?:/--?[\w-]+)*)", message)
    return _long_spelling(flags[0]) if flags else ""


def _long_spelling(spellings: str) -> str:
    """The first long flag of argparse's "-o/--output" or "--loss/--task" (the flag's own name)."""
    parts = spellings.split("/")
    return next((p for p in parts if p.startswith("--")), parts[-1])


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors, in every command (core and plugin), follow the project's
    convention for flag mistakes: one line, code `usage-error` located at the flag, exit 2."""

    def error(self, message: str) -> Any:
        issue = make_error("usage-error", f"{message} (see `{self.prog} --help`)", _flag_in(message))
        self.exit(EXIT_USAGE, f"error: {issue}\n")


def _missing_plugin(args: argparse.Namespace) -> int:
    module = PLUGIN_COMMANDS[args.command][0]
    extra = {"reference_impl.compute_cli": "compute", "reference_impl.select_cli": "compute"}.get(module, "all")
    print(
        f"error: `blueprint {args.command}` is not available here (module {module} is missing or has no such "
        f"command); install the optional parts: pip install -c constraints.txt 'gradient-blueprints[{extra}]'",
        file=sys.stderr,
    )
    return EXIT_USAGE


def build_parser(plugins: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The full parser. Only the plugin modules named in `plugins` are imported; the other plugin
    commands get a stub that lists them in --help."""
    parser = _Parser(
        prog="blueprint",
        description=(
            "Gradient blueprints: per-submodule gradient statistics and recommended update fractions (k*) "
            "published next to model weights, so others fine-tune only what matters. "
            f"Implements spec v{SPEC_VERSION}."
        ),
        epilog="Exit status: 0 valid/ok, 1 invalid input, 2 usage or I/O error.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__} (spec {SPEC_VERSION})"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "validate",
        help="check blueprint files against the spec",
        description=(
            "Validate blueprint files: JSON parsing rules and limits, the JSON Schema, and the semantic rules of "
            "SPEC.md. With --against, also check that each blueprint binds to a model (structure digest, module "
            "names, parameter counts) by reading only its safetensors headers."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="blueprint JSON files")
    p.add_argument(
        "--json", action="store_true", help="print one JSON list: per file path, valid, errors, warnings"
    )
    p.add_argument("--against", metavar="MODEL", help="a .safetensors file or a model folder to bind against")
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("show", help="summarise a blueprint (modules table, heavy-tail fit, domains)")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--top", type=int, default=0, metavar="N",
        help="show only the N best-ranked modules, in rank order (0: all, in document order)",
    )
    p.set_defaults(handler=cmd_show)

    p = sub.add_parser("schema", help="print the JSON Schema (2020-12) of the spec")
    p.add_argument("--path", action="store_true", help="print where the schema file is instead")
    p.set_defaults(handler=cmd_schema)

    p = sub.add_parser("digest", help="print a blueprint's digest (SHA-256 of its RFC 8785 canonical form)")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--canonical", action="store_true", help="print the canonical bytes instead of the digest")
    p.set_defaults(handler=cmd_digest)

    p = sub.add_parser("codes", help="list the stable error codes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_codes)

    from blueprint_format import diff_cli  # argparse only: the comparison is imported when run

    diff_cli.register(sub)

    registered: set[str] = set()
    for name in plugins:
        try:
            plugin = importlib.import_module(name)
        except ModuleNotFoundError:
            continue  # optional part not installed (any other ImportError is a bug: let it show)
        register = getattr(plugin, "register", None)
        if callable(register):
            before = set(sub.choices)
            register(sub)
            registered |= set(sub.choices) - before
    for command, (_, help_text) in PLUGIN_COMMANDS.items():
        if command not in registered:
            stub = sub.add_parser(command, help=help_text, add_help=False)
            stub.add_argument("rest", nargs=argparse.REMAINDER)
            stub.set_defaults(handler=_missing_plugin)
    return parser


def _plugins_for(argv: Sequence[str]) -> tuple[str, ...]:
    """The plugin modules the command line needs: the one owning its command, or all for an unknown one."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is None or command in CORE_COMMANDS:
        return ()
    if command in PLUGIN_COMMANDS:
        return (PLUGIN_COMMANDS[command][0],)
    return PLUGINS


def _escape_unprintable_output() -> None:
    # A message quoting hostile input (a file name, a member name) must never crash the report:
    # characters the terminal's encoding cannot hold are written as backslash escapes.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `blueprint` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _escape_unprintable_output()
    parser = build_parser(_plugins_for(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage-error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(handler(args))
    except BlueprintError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"error: {make_error('io-error', str(exc))}", file=sys.stderr)
        return EXIT_USAGE


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
