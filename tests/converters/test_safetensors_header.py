"""safetensors: embed/extract/strip in `__metadata__`, in place or by streamed rewrite; faults; bad files."""

from __future__ import annotations

import errno
import json
import os
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file

import converters.safetensors_header as sh
from blueprint_format import (
    BlueprintError,
    BlueprintIOError,
    ContainerError,
    dumps,
    read_safetensors_header,
)
from converters import METADATA_KEY, SPEC_VERSION_KEY
from converters.safetensors_header import SafetensorsConverter
from tests.converters.converter_blueprints import blueprint_for_tensors, blueprints, build_blueprint
from tests.converters.helpers import leftovers, tensor_buffer_digest, write_safetensors

CONV = SafetensorsConverter()


def header_size(path: Path) -> int:
    with path.open("rb") as fh:
        return int(struct.unpack("<Q", fh.read(8))[0])


def library_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bp=blueprints(),
    previous=st.none() | blueprints(max_modules=3),
    other=st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=50), max_size=4),
    reserve=st.sampled_from([0, 0, 64, 5000]),
)
def test_round_trip_any_blueprint_any_container(bp, previous, other, reserve) -> None:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_safetensors(Path(tmp) / "m.safetensors", other or None)
        if previous is not None:
            CONV.write(path, previous)
        before_meta = {k: v for k, v in library_metadata(path).items() if not k.startswith(METADATA_KEY)}
        before_buffer = tensor_buffer_digest(path)
        before_tensors = load_file(str(path))

        CONV.write(path, bp, reserve=reserve)

        assert dumps(CONV.read(path)) == dumps(bp)  # canonically equal
        meta = library_metadata(path)
        assert meta[METADATA_KEY] == dumps(bp).decode() and meta[SPEC_VERSION_KEY] == bp.spec_version
        assert {k: v for k, v in meta.items() if not k.startswith(METADATA_KEY)} == before_meta
        assert tensor_buffer_digest(path) == before_buffer
        assert_same_tensors(load_file(str(path)), before_tensors)
        assert header_size(path) % 8 == 0 or previous is not None  # rewrites align; in-place keeps N
        assert leftovers(Path(tmp)) == []

        CONV.remove(path)
        assert CONV.read(path) is None
        assert {k: v for k, v in library_metadata(path).items()} == before_meta
        assert tensor_buffer_digest(path) == before_buffer


def test_other_metadata_order_and_values_kept(st_file: Path) -> None:
    original = read_safetensors_header(st_file).header
    bp = blueprint_for_tensors(CONV.tensors(st_file))
    CONV.write(st_file, bp)
    header = read_safetensors_header(st_file).header
    meta = header["__metadata__"]
    assert list(meta) == [*original["__metadata__"], METADATA_KEY, SPEC_VERSION_KEY]
    assert meta["note"] == "keep me ✓"
    assert list(header) == list(original)  # tensor entries keep their order and offsets
    assert {k: v for k, v in header.items() if k != "__metadata__"} == {
        k: v for k, v in original.items() if k != "__metadata__"
    }


def test_header_is_padded_with_spaces_to_8_bytes_on_rewrite(st_file: Path) -> None:
    bp = blueprint_for_tensors(CONV.tensors(st_file))
    result = CONV.write(st_file, bp)
    assert not result.in_place
    n = header_size(st_file)
    raw = st_file.read_bytes()[8 : 8 + n]
    assert n % 8 == 0
    assert raw == raw.rstrip(b" ") + b" " * (n - len(raw.rstrip(b" ")))
    json.loads(raw)  # the padding is JSON whitespace


def test_second_embed_is_in_place_and_keeps_file_identity(st_file: Path) -> None:
    bp = blueprint_for_tensors(CONV.tensors(st_file))
    CONV.write(st_file, bp, reserve=4096)
    inode, size = st_file.stat().st_ino, st_file.stat().st_size
    bp2 = blueprint_for_tensors(CONV.tensors(st_file), description="refreshed")
    result = CONV.write(st_file, bp2, in_place=True)
    assert result.in_place
    assert st_file.stat().st_ino == inode and st_file.stat().st_size == size
    assert CONV.read(st_file) == bp2


def test_reserve_guarantees_spare_padding(st_file: Path) -> None:
    bp = blueprint_for_tensors(CONV.tensors(st_file))
    CONV.write(st_file, bp, reserve=10_000)
    n = header_size(st_file)
    used = len(st_file.read_bytes()[8 : 8 + n].rstrip(b" "))
    assert n - used >= 10_000


def test_rewrite_is_the_default(st_file: Path) -> None:
    bp = blueprint_for_tensors(CONV.tensors(st_file))
    CONV.write(st_file, bp, reserve=4096)
    inode = st_file.stat().st_ino
    assert not CONV.write(st_file, bp).in_place  # the header fits, but in place is opt-in
    assert st_file.stat().st_ino != inode
    inode = st_file.stat().st_ino
    assert not CONV.write(st_file, bp, in_place=False).in_place
    assert st_file.stat().st_ino != inode
    assert CONV.read(st_file) == bp


def test_write_to_out_leaves_source_untouched(st_file: Path, tmp_path: Path) -> None:
    original = st_file.read_bytes()
    bp = blueprint_for_tensors(CONV.tensors(st_file))
    out = tmp_path / "out.safetensors"
    CONV.write(st_file, bp, out=out)
    assert st_file.read_bytes() == original
    assert CONV.read(out) == bp
    assert tensor_buffer_digest(out) == tensor_buffer_digest(st_file)


def test_strip_without_blueprint_changes_nothing(st_file: Path) -> None:
    original = st_file.read_bytes()
    assert not CONV.remove(st_file).changed
    assert st_file.read_bytes() == original


@pytest.mark.slow
def test_real_minilm_round_trip(minilm_copy: Path) -> None:
    tensors = CONV.tensors(minilm_copy)
    assert len(tensors) > 50
    before_buffer = tensor_buffer_digest(minilm_copy)
    before = load_file(str(minilm_copy))
    bp = blueprint_for_tensors(tensors)
    CONV.write(minilm_copy, bp)
    assert CONV.read(minilm_copy) == bp
    assert tensor_buffer_digest(minilm_copy) == before_buffer
    assert_same_tensors(load_file(str(minilm_copy)), before)
    CONV.remove(minilm_copy)
    assert CONV.read(minilm_copy) is None


# ---- faults: the original survives every failure, no temp file stays behind --------------------------


def _boom(*args: object, **kw: object) -> None:
    raise RuntimeError("injected")


@pytest.mark.parametrize("step", ["after-temp-creation", "mid-copy", "before-rename", "fsync"])
def test_fault_during_rewrite_leaves_original(
    st_file: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    original = st_file.read_bytes()
    bp = build_blueprint([("m", 1)])
    if step == "after-temp-creation":
        real_pack = struct.pack
        monkeypatch.setattr(sh.struct, "pack", lambda *a: _boom() if a[0] == "<Q" else real_pack(*a))
    elif step == "mid-copy":
        monkeypatch.setattr(sh, "USER_CHUNK", 64)
        monkeypatch.setattr(sh, "KERNEL_CHUNK", 64)
        calls = {"n": 0}
        real = sh.copy_chunk_kernel

        def flaky(*a: int) -> int:
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("injected mid-copy")
            return real(*a)

        monkeypatch.setattr(sh, "copy_chunk_kernel", flaky)
    elif step == "before-rename":
        monkeypatch.setattr(os, "replace", _boom)
    else:
        monkeypatch.setattr(os, "fsync", _boom)
    with pytest.raises(RuntimeError, match="injected"):
        CONV.write(st_file, bp)
    assert st_file.read_bytes() == original
    assert leftovers(st_file.parent) == []


def test_fault_mid_copy_in_user_space_fallback(st_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = st_file.read_bytes()
    monkeypatch.setattr(sh, "USER_CHUNK", 32)

    def no_kernel(*a: int) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    calls = {"n": 0}
    real = sh.copy_chunk_user

    def flaky(*a: int) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a)

    monkeypatch.setattr(sh, "copy_chunk_kernel", no_kernel)
    monkeypatch.setattr(sh, "copy_chunk_user", flaky)
    with pytest.raises(BlueprintIOError) as info:
        CONV.write(st_file, build_blueprint([("m", 1)]))
    assert info.value.code == "write-failed" and "No space left" in str(info.value)
    assert st_file.read_bytes() == original and leftovers(st_file.parent) == []


def test_user_space_fallback_copies_exactly(st_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sh, "USER_CHUNK", 7)
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    before = tensor_buffer_digest(st_file)
    CONV.write(st_file, build_blueprint([("m", 1)]))
    assert tensor_buffer_digest(st_file) == before


def test_full_disk_gives_write_failed(st_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = st_file.read_bytes()

    def full(*a: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sh, "copy_chunk_kernel", full)
    monkeypatch.setattr(sh, "copy_chunk_user", full)
    with pytest.raises(BlueprintIOError) as info:
        CONV.write(st_file, build_blueprint([("m", 1)]))
    assert info.value.code == "write-failed" and info.value.exit_status == 2
    assert st_file.read_bytes() == original and leftovers(st_file.parent) == []


def test_read_only_folder_gives_write_failed(st_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, which ignores permission bits: simulate the refusal the OS would give.
    original = st_file.read_bytes()

    def denied(*a: object, **kw: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(sh.os, "replace", denied)
    with pytest.raises(BlueprintIOError) as info:
        CONV.write(st_file, build_blueprint([("m", 1)]))
    assert info.value.code == "write-failed" and "Permission denied" in str(info.value)
    assert st_file.read_bytes() == original and leftovers(st_file.parent) == []


def test_read_only_file_in_place_gives_write_failed(st_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bp = build_blueprint([("m", 1)])
    CONV.write(st_file, bp, reserve=4096)
    original = st_file.read_bytes()
    real_open = os.open

    def ro_open(path: object, flags: int, *a: object) -> int:
        if flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(sh.os, "open", ro_open)
    with pytest.raises(BlueprintIOError) as info:
        CONV.write(st_file, build_blueprint([("m", 2)]))
    assert info.value.code == "write-failed" and "Read-only" in str(info.value)
    assert st_file.read_bytes() == original


def test_fault_during_in_place_write_restores_header(st_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    CONV.write(st_file, build_blueprint([("m", 1)]), reserve=4096)
    original = st_file.read_bytes()
    real = sh._pwrite_all
    calls = {"n": 0}

    def torn(fd: int, data: bytes, offset: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:  # write half of the new header, then fail
            os.pwrite(fd, data[: len(data) // 2], offset)
            raise OSError(errno.EIO, "Input/output error")
        real(fd, data, offset)

    monkeypatch.setattr(sh, "_pwrite_all", torn)
    with pytest.raises(BlueprintIOError) as info:
        CONV.write(st_file, build_blueprint([("m", 2)]), in_place=True)
    assert info.value.code == "write-failed" and "restored" in str(info.value)
    assert st_file.read_bytes() == original


# ---- bad containers: a coded error, never a crash ----------------------------------------------------


def _write(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "bad.safetensors"
    p.write_bytes(data)
    return p


def _header(obj: object, pad: bytes = b"") -> bytes:
    raw = json.dumps(obj).encode() + pad
    return struct.pack("<Q", len(raw)) + raw


BAD = {
    "empty": b"",
    "short-length": b"\x01\x02\x03",
    "length-beyond-file": struct.pack("<Q", 1000) + b"{}",
    "not-json": struct.pack("<Q", 5) + b"{abc}",
    "not-object": _header([1, 2]),
    "not-utf8": struct.pack("<Q", 4) + b'{"\xff',
    "metadata-not-strings": _header({"__metadata__": {"a": 1}}),
    "overlapping": _header(
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        }
    )
    + b"\0" * 12,
    "out-of-range": _header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}) + b"\0" * 4,
    "truncated": _header({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}) + b"\0" * 10,
    "bad-dtype": _header({"a": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}) + b"\0" * 4,
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_container_is_a_coded_error(tmp_path: Path, case: str) -> None:
    p = _write(tmp_path, BAD[case])
    for op in (
        lambda: CONV.read(p),
        lambda: CONV.write(p, build_blueprint([("m", 1)])),
        lambda: CONV.remove(p),
    ):
        with pytest.raises(ContainerError) as info:
            op()
        assert info.value.code == "bad-container", info.value
    assert p.read_bytes() == BAD[case]


def test_header_over_cap_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the 8 length bytes exist: a reader that tried to read the header would fail differently.
    p = _write(tmp_path, struct.pack("<Q", 100_000_001))
    with pytest.raises(ContainerError) as info:
        CONV.read(p)
    assert info.value.code == "header-too-large"
    p2 = _write(tmp_path, struct.pack("<Q", 2**63))
    with pytest.raises(ContainerError) as info:
        CONV.read(p2)
    assert info.value.code == "header-too-large"


def test_embedded_document_invalid_is_reported_with_its_code(tmp_path: Path) -> None:
    p = write_safetensors(tmp_path / "m.safetensors", {METADATA_KEY: '{"spec_version": "1.0.0"}'})
    with pytest.raises(BlueprintError) as info:
        CONV.read(p)
    assert info.value.code == "missing-field"
    assert str(p) in str(info.value)


def test_spec_version_entry_must_agree(tmp_path: Path) -> None:
    bp = build_blueprint([("m", 1)])
    meta = {METADATA_KEY: dumps(bp).decode(), SPEC_VERSION_KEY: "1.9.0"}
    p = write_safetensors(tmp_path / "m.safetensors", meta)
    with pytest.raises(ContainerError) as info:
        CONV.read(p)
    assert info.value.code == "bad-container"


def test_missing_file_is_io_error(tmp_path: Path) -> None:
    with pytest.raises(BlueprintIOError) as info:
        CONV.read(tmp_path / "nope.safetensors")
    assert info.value.code == "io-error" and info.value.exit_status == 2
