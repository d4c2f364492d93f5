"""Crash-safe file writes, and a lock that serialises read-modify-write updates of a folder.

A write goes to a temp file beside the target (`.NAME.XXXXXXXX.tmp`), is flushed and fsynced, and
is renamed over the target, then the folder is fsynced: readers see the old file or the new one,
never a mix, and a crash at any moment leaves the original intact.

Hardening (SPEC.md 16 and 18):

* Only a regular file or a new path is ever replaced: a symlink, FIFO, device, socket or folder
  in the target's place is refused (`not-a-regular-file`), and so is a file this process may not
  write (`write-failed`), exactly as an in-place update would be refused.
* Each writer holds an exclusive `flock` on its temp file until the rename. A temp file of the
  target's own pattern that nobody holds is what a killed writer left behind; the next write of
  that target removes it. A live writer's temp file is never touched (the lock says it is live).
* `folder_lock` serialises the updates of one folder's containers (read, change, write back), so
  that two concurrent embeds are applied one after the other instead of one silently undoing the
  other. It is re-entrant within a thread.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from blueprint_format.errors import BlueprintIOError, make_error
from blueprint_format.paths import require_output_target

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks, writes stay atomic
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: int | None = None) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces `path` only when the block completes without error.

    The temp file lives beside `path` so that the final `os.replace` is atomic on POSIX; the file
    and then its folder are fsynced so a crash after return cannot expose a half-written file.
    An existing file's permission bits are kept unless `mode` is given.
    """
    target = require_writable_target(path)
    folder = target.parent if str(target.parent) else Path(".")
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
    remove_stale_temp_files(target)
    fd, tmp = _locked_temp_file(target, folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)  # still holding the temp file's lock, so no one removes it first
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


def require_writable_target(path: str | Path) -> Path:
    """`path` if writing it would create a new file or replace a regular file this process may
    write; refuse a symlink, FIFO, device, socket or folder (`not-a-regular-file`) and a file it
    may not write (`write-failed`, as an update in place would be refused)."""
    target = require_output_target(path)
    if target.exists() and not os.access(target, os.W_OK):
        raise BlueprintIOError(
            make_error("write-failed", f"{target} is read-only; the original is unchanged")
        )
    return target


def _temp_pattern(target: Path) -> re.Pattern[str]:
    # tempfile.mkstemp(prefix=".NAME.", suffix=".tmp") puts 8 characters of [a-z0-9_] between them.
    return re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp\Z")


def _locked_temp_file(target: Path, folder: Path) -> tuple[int, Path]:
    """A new temp file for `target`, created and locked; retried if a cleaner removed it in between."""
    for _ in range(100):
        try:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        except OSError as exc:
            raise BlueprintIOError(
                make_error("write-failed", f"cannot create a temporary file in {folder}: {exc.strerror or exc}")
            ) from None
        if fcntl is None:
            return fd, Path(name)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(name)):
                return fd, Path(name)
        except OSError:
            pass  # removed by a cleaner between mkstemp and flock: take another name
        os.close(fd)
    raise BlueprintIOError(make_error("write-failed", f"cannot create a temporary file in {folder}"))


def remove_stale_temp_files(target: str | Path) -> list[Path]:
    """Remove the temp files a killed writer of `target` left (`.NAME.XXXXXXXX.tmp` that no live
    writer holds locked); return what was removed. Errors are ignored: cleaning is best effort."""
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    if fcntl is None:
        return []
    pattern = _temp_pattern(target)
    removed = []
    try:
        names = [n for n in os.listdir(folder) if pattern.match(n)]
    except OSError:
        return []
    for name in names:
        candidate = folder / name
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while a live writer holds it
            if os.path.samestat(os.fstat(fd), os.lstat(candidate)):
                os.unlink(candidate)
                removed.append(candidate)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


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


_held: dict[tuple[int, int], tuple[int, int, int]] = {}  # folder -> (thread, depth, fd)
_held_guard = threading.Lock()


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` for a read-modify-write update of files in it.

    Other processes (and threads) taking the same lock wait until it is released; a thread that
    already holds it may take it again. Advisory: it orders this project's writers, not others.
    Where the folder cannot be opened or locks are unsupported, the update runs unlocked.
    """
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    key = _key(fd)
    me = threading.get_ident()
    with _held_guard:
        owner = _held.get(key)
        if owner is not None and owner[0] == me:
            _held[key] = (me, owner[1] + 1, owner[2])
            os.close(fd)
            fd = -1
    if fd == -1:
        try:
            yield
        finally:
            with _held_guard:
                thread, depth, held_fd = _held[key]
                _held[key] = (thread, depth - 1, held_fd)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with _held_guard:
            _held[key] = (me, 1, fd)
        yield
    finally:
        with _held_guard:
            _held.pop(key, None)
        os.close(fd)  # releases the lock


def _key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino
