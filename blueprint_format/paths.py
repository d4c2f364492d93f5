"""Checks on the paths a command reads from or writes to, made before any byte moves.

Readers must never block on a FIFO or read a device without end, and writers must never replace
a device node, FIFO, socket or symlink with a regular file (as root, that would replace
/dev/full). Both refuse with `not-a-regular-file` (exit status 2) and name the path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from blueprint_format.errors import BlueprintIOError, make_error

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _refuse(path: Path, kind: str, what: str) -> BlueprintIOError:
    return BlueprintIOError(make_error("not-a-regular-file", f"{path} is {kind}; {what}"))


def require_regular_input(path: str | Path) -> Path:
    """Return `path` if it names an existing regular file (symlinks to one are followed); refuse a
    FIFO, device, socket or folder without opening it. A missing file is an `io-error`."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        raise BlueprintIOError(make_error("io-error", f"cannot read {p}: {exc.strerror or exc}")) from None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(p, _kind(st.st_mode), "give a regular file")
    return p


def require_output_target(path: str | Path) -> Path:
    """Return `path` if writing it would create a new file or replace a regular file; refuse a
    symlink, FIFO, device, socket or folder in its place (the write would replace it)."""
    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return p
    except OSError as exc:
        raise BlueprintIOError(make_error("io-error", f"cannot inspect {p}: {exc.strerror or exc}")) from None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(p, _kind(st.st_mode), "write to a regular file or a new path")
    return p
