"""The one place that names the package version and the spec versions it implements."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__version__ = "0.1.0"

#: The newest spec version this implementation knows; a producer declares the lowest version that
#: defines every member it uses (`required_spec_version`, SPEC 1.4).
SPEC_VERSION = "1.1.0"
#: The major version this reader accepts.
SUPPORTED_MAJOR = 1
#: The highest minor version of SUPPORTED_MAJOR whose members this reader knows.
SUPPORTED_MINOR = 1
#: The members each minor version added (SPEC 14's table), as paths from the document root: "*"
#: stands for every array entry or object member.
MEMBERS_SINCE: dict[int, tuple[tuple[str, ...], ...]] = {
    1: (("domains", "*", "stability"), ("modules", "*", "stats", "*", "interval")),
}


def _found(node: Any, path: tuple[str, ...], pointer: str) -> Iterator[str]:
    """JSON pointers of the members at `path` below `node` (a parsed document or its models)."""
    if not path:
        yield pointer
        return
    head, rest = path[0], path[1:]
    if head == "*":
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in items:
            if child is not None:
                yield from _found(child, rest, f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}")
        return
    child = node.get(head) if isinstance(node, dict) else getattr(node, head, None)
    if child is not None:
        yield from _found(child, rest, f"{pointer}/{head}")


def newer_members(doc: Any, minor: int) -> Iterator[tuple[str, int]]:
    """(JSON pointer, minor version that added it) of each member of `doc` newer than 1.`minor`."""
    for since, paths in sorted(MEMBERS_SINCE.items()):
        if since > minor:
            for path in paths:
                for pointer in _found(doc, path, ""):
                    yield pointer, since


def required_spec_version(doc: Any) -> str:
    """The lowest spec version that defines every member of `doc` (a parsed document or a Blueprint)."""
    minor = max((since for _, since in newer_members(doc, 0)), default=0)
    return f"{SUPPORTED_MAJOR}.{minor}.0"
