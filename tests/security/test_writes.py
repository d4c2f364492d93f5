"""Crashes and concurrency during writes (issue 10, items 3, 4 and 5), with real processes: a
SIGKILL in the middle of an embed, a writer stopped while it holds its temp file, and concurrent
embeds into one model folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from blueprint_format import BlueprintError, dump, read_safetensors_header
from tests.converters.converter_blueprints import blueprint_for_tensors
from tests.converters.helpers import leftovers, tensor_buffer_digest, write_safetensors
from tests.security.helpers import ROOT

BIG = 8 * 1024 * 1024  # a large header (the issue used 48 MB; the property does not depend on it)


def _big_header_model(path: Path) -> Path:
    """A real safetensors file with a 48 MB header (a large metadata entry), written by the library."""
    return write_safetensors(path, {"format": "pt", "notes": "n" * BIG})


def _cli(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "blueprint_format", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _wait_for_temp(folder: Path, at_least: int, proc: subprocess.Popen[str], limit: float = 60) -> Path:
    """The temp file a running writer is filling, once it holds `at_least` bytes."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for name in leftovers(folder):
            try:
                if (folder / name).stat().st_size >= at_least:
                    return folder / name
            except FileNotFoundError:
                pass
        assert proc.poll() is None, f"the writer finished before it was caught: {proc.communicate()}"
        time.sleep(0.002)
    raise AssertionError("no temp file appeared")


def _blueprint_file(model: Path, path: Path, description: str = "d") -> Path:
    dump(blueprint_for_tensors(read_safetensors_header(model).tensors, description=description), path)
    return path


def _loads(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return list(f.keys()) != []


@pytest.mark.slow
def test_sigkill_mid_embed_leaves_the_original_and_the_next_write_cleans_up(tmp_path: Path) -> None:
    """Items 3 and 5. The header fits in place (64 KiB reserved), yet the default write is the
    crash-safe rewrite; killed while copying, it leaves the original byte for byte, and the temp
    file it left is removed by the next write of that file."""
    model = _big_header_model(tmp_path / "model.safetensors")
    first = _blueprint_file(model, tmp_path / "first.json", "first")
    assert _cli("embed", str(first), str(model), "--reserve", "64K").wait(120) == 0
    before = model.read_bytes()
    second = _blueprint_file(model, tmp_path / "second.json", "second")
    for fraction in (0.2, 0.8):
        proc = _cli("embed", str(second), str(model))
        temp = _wait_for_temp(tmp_path, int(len(before) * fraction), proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        assert model.read_bytes() == before and _loads(model)
        assert temp.exists()  # what the killed writer left behind
    run = _cli("embed", str(second), str(model), "--json")
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert leftovers(tmp_path) == []
    assert json.loads(out)["in_place"] is False
    assert tensor_buffer_digest(model) == tensor_buffer_digest(tmp_path / "model.safetensors")


@pytest.mark.slow
def test_readers_never_see_a_torn_header_during_embeds(tmp_path: Path) -> None:
    """Item 3: while embeds run, every read of the header succeeds (old file or new, never a mix)."""
    model = write_safetensors(tmp_path / "model.safetensors", {"notes": "n" * (8 * 1024 * 1024)})
    files = [_blueprint_file(model, tmp_path / f"bp{i}.json", f"v{i}") for i in range(3)]
    assert _cli("embed", str(files[0]), str(model), "--reserve", "64K").wait(120) == 0
    stop = threading.Event()
    failures: list[str] = []
    reads = [0]

    def read_loop() -> None:
        while not stop.is_set():
            try:
                read_safetensors_header(model)
                reads[0] += 1
            except BlueprintError as exc:
                failures.append(str(exc))

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for bp in files[1:]:
            assert _cli("embed", str(bp), str(model)).wait(120) == 0
    finally:
        stop.set()
        reader.join()
    assert failures == [] and reads[0] > 0


def test_a_live_writers_temp_file_is_never_removed(tmp_path: Path) -> None:
    """Item 5: a writer stopped (SIGSTOP) while it holds its temp file keeps it: another write of
    the same file removes only temp files that no live writer holds."""
    model = _big_header_model(tmp_path / "model.safetensors")
    bp = _blueprint_file(model, tmp_path / "bp.json")
    writer = _cli("embed", str(bp), str(model))
    temp = _wait_for_temp(tmp_path, 1, writer)
    writer.send_signal(signal.SIGSTOP)
    try:
        stale = tmp_path / ".model.safetensors.stale123.tmp"  # as a killed writer would leave it
        stale.write_bytes(b"x")
        # Another writer of the same file, taking no folder lock (so it is not queued behind).
        subprocess.run(
            [sys.executable, "-c", f"import blueprint_format as bf; bf.atomic_write_bytes({str(model)!r}, b'x')"],
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            check=True,
            timeout=60,
        )
        assert temp.exists(), "a live writer's temp file was removed"
        assert not stale.exists(), "the stale temp file was not removed"
    finally:
        writer.send_signal(signal.SIGCONT)
        writer.wait(120)
    assert writer.returncode == 0
    assert not temp.exists()


def test_concurrent_embeds_are_applied_one_after_another(tmp_path: Path) -> None:
    """Item 4: six processes embed six blueprints into one model folder at once (card, blueprint.json
    and the weights' header). Each is applied to the result of the previous one: each reports the
    blueprint it replaced, those form one chain, and the folder ends consistent."""
    folder = tmp_path / "model"
    folder.mkdir()
    model = write_safetensors(folder / "model.safetensors")
    files = [_blueprint_file(model, tmp_path / f"bp{i}.json", f"writer {i}") for i in range(6)]
    procs = [_cli("embed", str(f), str(folder), "--into-weights", "--json") for f in files]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    digests = {r["digest"] for r in reports}
    replaced = [r["replaced"] for r in reports]
    assert replaced.count(None) == 1  # exactly one writer found the folder empty
    assert len(set(replaced)) == len(replaced)  # nobody replaced what another one also replaced
    assert set(replaced) - {None} < digests  # and all but the last written were replaced
    final = (digests - set(replaced)).pop()
    from converters import extract
    from converters.model_card import ModelCardConverter, parse_front_matter, split_card

    card = (folder / "README.md").read_text()
    assert parse_front_matter(split_card(card), "card")["gradient_blueprint"]["digest"] == final
    for place in (folder, folder / "README.md", folder / "model.safetensors", folder / "blueprint.json"):
        bp = extract(place) if place.suffix != ".json" else None
        if bp is not None:
            from blueprint_format import digest

            assert digest(bp) == final, place
    assert ModelCardConverter().read(folder / "README.md") is not None
    assert leftovers(folder) == []
