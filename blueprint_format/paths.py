"""Checks on the paths a command reads from or writes to, made before any byte moves.

Readers must never block on a FIFO or read a device without end, and writers must never replace
a device node, FIFO, socket or symlink with a regular file (as root, that would replace
/dev/full). Both refuse with `not-a-regular-file` (exit status 2) and name the path.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

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


def open_regular_input(path: str | Path) -> BinaryIO:
    """Open `path` for reading only if it is a regular file (symlinks to one are followed).

    Checked before opening (a device is never opened) and again on the open descriptor, which is
    opened non-blocking, so a FIFO swapped in between cannot make the open hang either.
    """
    p = require_regular_input(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        raise BlueprintIOError(make_error("io-error", f"cannot read {p}: {exc.strerror or exc}")) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _refuse(p, _kind(mode), "give a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: str | Path, limit: int, too_large: Callable[[Path, int], Exception]) -> bytes:
    """The bytes of the regular file at `path`, refused with `too_large(path, size)` when it holds
    more than `limit` bytes: checked on its size before reading, and while reading (a file that
    grows meanwhile is never read past limit + 1 bytes)."""
    p = Path(path)
    with open_regular_input(p) as fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                raise too_large(p, size)
            data = fh.read(limit + 1)
        except OSError as exc:
            raise BlueprintIOError(make_error("io-error", f"cannot read {p}: {exc.strerror or exc}")) from None
    if len(data) > limit:
        raise too_large(p, len(data))
    return data
