"""Blueprints in the `__metadata__` of a safetensors header, touching no tensor byte.

Layout of a safetensors file: an 8-byte little-endian header length N, N bytes of JSON header
(padded with spaces), then the tensor buffer that the header's `data_offsets` index relative to
its start. The blueprint lives in `__metadata__` under `gradient_blueprint` (canonical JSON text)
with `gradient_blueprint.spec_version` beside it; all other entries are kept.

Reading parses only the length and the header (bounded by the 100 MB cap, checked before the
header is read), so its cost does not depend on the file size.

Writing has two paths:

* Rewrite, the default: a temp file in the same folder gets the new length and header (space-padded
  to a multiple of 8, as the safetensors library writes it, and further so that the buffer keeps
  its offset within a 4 KiB page), then the tensor buffer is streamed over with
  `os.copy_file_range` in 32 MiB chunks (falling back to pread/pwrite), starting writeback after
  each chunk so that the final fsync has little left to do; then the temp file is renamed over the
  target. The original is untouched until the rename, so a crash or a kill at any moment leaves
  either the old file or the new one, and readers never see a torn header. Tensor offsets are
  relative to the buffer, so they stay valid. The cost is that of a durable copy (`cp` + fsync).
* In place, only when asked (`in_place=True`; CLI `--in-place`) and when the new header (plus any
  requested reserve) fits in the old N bytes: only bytes 8..8+N are overwritten, padded with
  spaces, so the cost does not depend on the file size. The risk, which is why it is opt-in: it is
  not atomic. A crash or kill -9 during the write leaves a torn header (an unreadable file), and
  readers running meanwhile can read a half-written header. An exception during the write
  restores the old header bytes. The target must be a regular file (not a symlink).

`reserve` asks for at least that many spare padding bytes after the header, so that later
updates of a similar size can be made in place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blueprint_format import Blueprint, TensorInfo, atomic_writer, read_safetensors_header
from blueprint_format.atomic import require_writable_target
from blueprint_format.binding import SAFETENSORS_HEADER_CAP, SafetensorsHeader
from blueprint_format.errors import BlueprintIOError, ContainerError, make_error
from converters.base import (
    METADATA_KEY,
    SPEC_VERSION_KEY,
    Converter,
    WriteResult,
    blueprint_from_metadata,
    io_error,
    metadata_entries,
    require_file,
    same_file,
    text_digest,
)

#: Bytes per copy_file_range call (in-kernel, so large is fine; writeback is started per chunk).
KERNEL_CHUNK = 32 * 1024 * 1024
#: Bytes per pread/pwrite in the fallback copy (bounded memory).
USER_CHUNK = 8 * 1024 * 1024
#: safetensors aligns the start of the tensor buffer to 8 bytes; so do we when we choose N.
ALIGNMENT = 8
#: Page size for keeping the rewritten buffer at the source's in-page offset (see update()).
PAGE = 4096
#: Whether rewrites pad the header so the buffer keeps its in-page offset (tests may turn it off).
PAGE_CONGRUENT = True
#: errno values meaning "copy_file_range cannot be used here", after which we copy by hand.
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM, errno.EBADF}

MetadataEdit = Callable[[dict[str, str]], "dict[str, str] | None"]


def encode_header(header: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, the way the safetensors library writes headers."""
    return json.dumps(header, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def rebuild_header(original: dict[str, Any], metadata: dict[str, str]) -> dict[str, Any]:
    """`original` with `__metadata__` replaced by `metadata`, every other entry and the key order kept.

    An absent `__metadata__` is added first (where the safetensors library puts it); an empty one
    is dropped.
    """
    out: dict[str, Any] = {}
    if "__metadata__" not in original and metadata:
        out["__metadata__"] = metadata
    for key, value in original.items():
        if key == "__metadata__":
            if metadata:
                out[key] = metadata
        else:
            out[key] = value
    return out


def padded_size(length: int, reserve: int) -> int:
    """Header size for a rewrite: the JSON plus `reserve` spare bytes, rounded up to the alignment."""
    want = length + max(reserve, 0)
    return -(-want // ALIGNMENT) * ALIGNMENT


class SafetensorsConverter(Converter):
    """Blueprint in the safetensors header's `__metadata__`."""

    kind = "safetensors"

    def read(self, path: Path) -> Blueprint | None:
        require_file(path)
        info = read_safetensors_header(path)
        return blueprint_from_metadata(info.metadata, f"{path} (__metadata__[{METADATA_KEY!r}])")

    def tensors(self, path: Path) -> list[TensorInfo] | None:
        require_file(path)
        return read_safetensors_header(path).tensors

    def write(self, path: Path, bp: Blueprint, out: Path | None = None, **opts: Any) -> WriteResult:
        entries = metadata_entries(bp)

        def edit(meta: dict[str, str]) -> dict[str, str]:
            meta.update(entries)  # replaces a previous blueprint in its position, else appends
            return meta

        return self.update(
            path,
            edit,
            out,
            reserve=int(opts.get("reserve", 0) or 0),
            in_place=bool(opts.get("in_place", False)),
        )

    def remove(self, path: Path, out: Path | None = None, **opts: Any) -> WriteResult:
        def edit(meta: dict[str, str]) -> dict[str, str] | None:
            if METADATA_KEY not in meta and SPEC_VERSION_KEY not in meta:
                return None
            meta.pop(METADATA_KEY, None)
            meta.pop(SPEC_VERSION_KEY, None)
            return meta

        return self.update(
            path,
            edit,
            out,
            reserve=int(opts.get("reserve", 0) or 0),
            in_place=bool(opts.get("in_place", False)),
        )

    def update(
        self,
        path: Path,
        edit: MetadataEdit,
        out: Path | None = None,
        *,
        reserve: int = 0,
        in_place: bool = False,
    ) -> WriteResult:
        """Apply `edit` to the metadata and write the result: by crash-safe rewrite, or in place
        when `in_place` is asked for and the new header fits (see the module's docstring).

        `edit` returns None when nothing changes; then `path` is left alone (and copied to `out`).
        """
        require_file(path)
        if reserve < 0:
            raise ContainerError(make_error("bad-container", f"reserve must be >= 0, got {reserve}"))
        info = read_safetensors_header(path)
        replaced = text_digest(info.metadata.get(METADATA_KEY))
        metadata = edit(dict(info.metadata))
        target = out if out is not None else path
        writes_source = out is None or same_file(out, path)
        if metadata is None:
            if writes_source:
                return WriteResult(path=path, changed=False)
            body = encode_header(info.header)
            rewrite(path, target, info, body.ljust(info.header_size, b" "))
            return WriteResult(path=target, changed=False, files=[target])
        body = encode_header(rebuild_header(info.header, metadata))
        if len(body) + reserve <= info.header_size and writes_source and in_place:
            overwrite_header(path, info, body.ljust(info.header_size, b" "))
            return WriteResult(path=path, in_place=True, files=[path], replaced=replaced)
        size = padded_size(len(body), reserve)
        if PAGE_CONGRUENT and info.data_start % ALIGNMENT == 0:
            # Keep the buffer at the same offset within a page as in the source, so the kernel
            # copies page to page rather than shifting every byte; the extra (< 4 KiB) padding
            # also makes the next update likely to fit in place.
            size += (info.data_start - 8 - size) % PAGE
        if size > SAFETENSORS_HEADER_CAP:
            raise ContainerError(
                make_error("header-too-large", f"{path}: the new header ({size} bytes) would exceed the cap")
            )
        rewrite(path, target, info, body.ljust(size, b" "))
        return WriteResult(path=target, files=[target], replaced=replaced)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view, offset = view[n:], offset + n


def overwrite_header(path: Path, info: SafetensorsHeader, region: bytes) -> None:
    """Overwrite the N header bytes after the length prefix with `region` (exactly N bytes), then fsync.

    On any failure the old header bytes are written back (best effort) before the error propagates.
    """
    assert len(region) == info.header_size
    require_writable_target(path)  # a regular file, not a symlink (whose target would change)
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise io_error(path, exc, "write-failed") from None
    try:
        if os.fstat(fd).st_size != info.file_size:
            raise io_error(path, "the file changed while it was being updated", "write-failed")
        old = os.pread(fd, info.header_size, 8)
        try:
            _pwrite_all(fd, region, 8)
            os.fsync(fd)
        except BaseException as exc:
            try:
                _pwrite_all(fd, old, 8)
                os.fsync(fd)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise io_error(
                    path, f"{exc.strerror or exc}; the old header was restored", "write-failed"
                ) from None
            raise
    finally:
        os.close(fd)


def rewrite(source: Path, target: Path, info: SafetensorsHeader, header_bytes: bytes) -> None:
    """Write length + `header_bytes` + the source's tensor buffer to `target` atomically (temp + rename)."""
    try:
        src = source.open("rb")
    except OSError as exc:
        raise io_error(source, exc) from None
    with src:
        if os.fstat(src.fileno()).st_size != info.file_size:
            raise io_error(source, "the file changed while it was being updated", "write-failed")
        if hasattr(os, "posix_fadvise"):  # one sequential pass: ask for generous read-ahead
            with contextlib.suppress(OSError):
                os.posix_fadvise(src.fileno(), info.data_start, 0, os.POSIX_FADV_SEQUENTIAL)
        with atomic_writer(target) as fh:
            fh.write(struct.pack("<Q", len(header_bytes)))
            fh.write(header_bytes)
            fh.flush()
            copy_range(src.fileno(), fh.fileno(), info.data_start, info.file_size - info.data_start)


def copy_range(src_fd: int, dst_fd: int, offset: int, count: int) -> None:
    """Copy `count` bytes from `src_fd` at `offset` to `dst_fd` at its current position, in bounded chunks.

    Uses copy_file_range (no data through user space, reflinks where the filesystem offers them),
    falling back to pread/pwrite. Leaves `dst_fd`'s position after the copied bytes.
    """
    start = os.lseek(dst_fd, 0, os.SEEK_CUR)
    kernel = hasattr(os, "copy_file_range")
    done = 0
    while done < count:
        if kernel:
            try:
                n = copy_chunk_kernel(
                    src_fd, dst_fd, min(KERNEL_CHUNK, count - done), offset + done, start + done
                )
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                kernel = False
                continue
        else:
            n = copy_chunk_user(src_fd, dst_fd, min(USER_CHUNK, count - done), offset + done, start + done)
        if n == 0:
            raise BlueprintIOError(make_error("io-error", "the source ended early (truncated while copying)"))
        start_writeback(dst_fd, start + done, n)
        done += n
    os.lseek(dst_fd, start + count, os.SEEK_SET)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a copied chunk to disk now, so the final fsync has little left to wait for.

    On Linux, POSIX_FADV_DONTNEED starts asynchronous writeback of the range's dirty pages (and
    drops clean ones, so copying a large file does not flood the page cache). Advisory only.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        with contextlib.suppress(OSError):
            advise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def copy_chunk_kernel(src_fd: int, dst_fd: int, n: int, src_off: int, dst_off: int) -> int:
    """One copy_file_range call; returns the bytes copied (0 at end of file)."""
    return os.copy_file_range(src_fd, dst_fd, n, src_off, dst_off)


def copy_chunk_user(src_fd: int, dst_fd: int, n: int, src_off: int, dst_off: int) -> int:
    """One pread + pwrite of at most `n` bytes; returns the bytes copied (0 at end of file)."""
    data = os.pread(src_fd, n, src_off)
    _pwrite_all(dst_fd, data, dst_off)
    return len(data)
