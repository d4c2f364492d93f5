"""Atomic file writes: temp file in the same folder, fsync, rename. The original survives any failure."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from blueprint_format.errors import BlueprintIOError, make_error


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: int | None = None) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces `path` only when the block completes without error.

    The temp file lives beside `path` so that the final `os.replace` is atomic on POSIX; the file
    and then its folder are fsynced so a crash after return cannot expose a half-written file.
    An existing file's permission bits are kept unless `mode` is given.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise BlueprintIOError(
            make_error("write-failed", f"cannot create a temporary file in {folder}: {exc.strerror or exc}")
        ) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise BlueprintIOError(
                make_error(
                    "write-failed", f"cannot write {target}: {exc.strerror or exc}; the original is unchanged"
                )
            ) from None
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable; not every platform allows opening a directory.
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically."""
    with atomic_writer(path) as fh:
        fh.write(data)
