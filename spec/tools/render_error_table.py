"""Render SPEC.md's error-code table from `blueprint_format.errors.ERROR_CODES`.

The table in spec/v1/SPEC.md lives between the marker lines `<!-- error-codes:begin -->` and
`<!-- error-codes:end -->`. Without options this script rewrites that block in place; with
`--check` it only compares and exits 1 when SPEC.md is out of date (for tests and CI).

    python spec/tools/render_error_table.py [--check] [--spec PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SPEC = REPO_ROOT / "spec" / "v1" / "SPEC.md"
BEGIN = "<!-- error-codes:begin -->"
END = "<!-- error-codes:end -->"

if str(REPO_ROOT) not in sys.path:
    # Run as a script from anywhere: make the in-tree package importable without installing it.
    sys.path.insert(0, str(REPO_ROOT))


def _cell(text: str) -> str:
    # A literal pipe would split a Markdown table cell.
    return text.replace("|", "\\|")


def render_table() -> str:
    """The Markdown table, one row per code in ERROR_CODES order, without the marker lines."""
    from blueprint_format.errors import ERROR_CODES

    rows = ["| code | layer | meaning |", "|---|---|---|"]
    for entry in ERROR_CODES.values():
        rows.append(f"| `{entry.code}` | {_cell(entry.layer)} | {_cell(entry.summary)} |")
    return "\n".join(rows) + "\n"


def replace_block(text: str, table: str) -> str:
    """`text` with the lines between the markers replaced by `table`.

    Raises ValueError unless each marker occurs exactly once, on a line of its own, in order.
    """
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == END]
    if len(begins) != 1 or len(ends) != 1 or begins[0] > ends[0]:
        raise ValueError(f"expected exactly one {BEGIN!r} line followed by one {END!r} line")
    b, e = begins[0], ends[0]
    return "".join(lines[: b + 1]) + table + "".join(lines[e:])


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 when up to date (or rewritten), 1 when `--check` finds a difference, 2 on errors."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if SPEC.md is stale")
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="the SPEC.md to check or update")
    args = parser.parse_args(argv)
    try:
        current = args.spec.read_bytes().decode("utf-8")
        updated = replace_block(current, render_table())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"error: {args.spec}: {exc}", file=sys.stderr)
        return 2
    if updated == current:
        return 0
    if args.check:
        print(f"{args.spec}: error-code table is out of date; run {Path(__file__).name} to regenerate it",
              file=sys.stderr)
        return 1
    from blueprint_format.atomic import atomic_write_bytes

    atomic_write_bytes(args.spec, updated.encode("utf-8"))
    print(f"{args.spec}: error-code table updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
