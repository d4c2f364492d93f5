"""Paths that are not regular files, and files this process may not write (issue 10, items 2, 6, 9).

Readers must refuse a FIFO (which would block them forever) or a device before opening it, and
writers must never replace a device node, FIFO or symlink with a regular file, nor replace a file
they could not have updated in place. Every case runs the real CLI in a subprocess, with a timeout
that a blocked reader would hit.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from blueprint_format import dump
from tests.converters.converter_blueprints import blueprint_for_tensors
from tests.converters.helpers import write_safetensors
from tests.security.helpers import ROOT, one_line_error, run_batch

MINIMAL = ROOT / "spec" / "compliance" / "valid" / "minimal.json"


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, Path]:
    """A real safetensors file and a blueprint bound to it."""
    from blueprint_format import read_safetensors_header

    st = write_safetensors(tmp_path / "model.safetensors")
    bp_file = tmp_path / "bp.json"
    dump(blueprint_for_tensors(read_safetensors_header(st).tensors), bp_file)
    return st, bp_file


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


# --- item 9: readers refuse FIFOs before opening them -------------------------------------------


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path / "blueprint.json")
    # A reader that opens the FIFO would block here, and the batch would time out.
    runs = run_batch(*([command, str(fifo)] for command in ("validate", "show", "digest", "extract", "strip")))
    for run in runs:
        assert run.returncode == 2, (run.stdout, run.stderr)
        one_line_error(run, "not-a-regular-file")


def test_fifos_in_other_places_are_refused(tmp_path: Path, model: tuple[Path, Path]) -> None:
    st, bp_file = model
    fifo = _fifo(tmp_path / "weights.safetensors")
    folders = []
    for name in ("blueprint.json", "README.md"):  # inside a model folder: refused, not skipped
        folder = tmp_path / name.replace(".", "-")
        folder.mkdir()
        shutil.copy(st, folder / "model.safetensors")
        _fifo(folder / name)
        folders.append(folder)
    runs = run_batch(
        ["validate", str(bp_file), "--against", str(fifo)],
        ["embed", str(fifo), str(st)],
        ["extract", str(_fifo(tmp_path / "unknown-suffix"))],
        *(["extract", str(folder)] for folder in folders),
    )
    for run in runs:
        assert run.returncode == 2, (run.stdout, run.stderr)
        one_line_error(run, "not-a-regular-file")


# --- item 2: writers never replace what is not a regular file -----------------------------------


def _device(path: Path) -> Path:
    """A character device node like /dev/full (1, 7), made in a test folder (needs root)."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("making a device node needs root")
    return path


def _targets(tmp_path: Path, model: Path) -> Iterator[tuple[str, Path, int]]:
    """(kind, path, the st_mode type bits it must keep) for each non-regular output target."""
    yield "fifo", _fifo(tmp_path / "out-fifo"), stat.S_IFIFO
    link = tmp_path / "out-link"
    victim = tmp_path / "victim.safetensors"
    shutil.copy(model, victim)
    link.symlink_to(victim)
    yield "symlink", link, stat.S_IFLNK
    yield "device", _device(tmp_path / "out-device"), stat.S_IFCHR


def test_outputs_never_replace_a_device_fifo_or_symlink(tmp_path: Path, model: tuple[Path, Path]) -> None:
    st, bp_file = model
    assert run_batch(["embed", str(bp_file), str(st)])[0].returncode == 0  # so extract has something
    targets = list(_targets(tmp_path, st))
    commands = [
        args
        for _, target, _ in targets
        for args in (
            ["extract", str(st), "-o", str(target)],
            ["embed", str(bp_file), str(st), "-o", str(target)],
            ["strip", str(st), "-o", str(target)],
        )
    ]
    for run, args in zip(run_batch(*commands), commands):
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        one_line_error(run, "not-a-regular-file")
    for kind, target, mode in targets:
        assert stat.S_IFMT(os.lstat(target).st_mode) == mode, kind
    assert (tmp_path / "victim.safetensors").read_bytes() == st.read_bytes()  # never written through


def test_embedding_into_a_symlink_is_refused(tmp_path: Path, model: tuple[Path, Path]) -> None:
    st, bp_file = model
    before = st.read_bytes()
    link = tmp_path / "link.safetensors"
    link.symlink_to(st)
    for run in run_batch(["embed", str(bp_file), str(link)], ["embed", str(bp_file), str(link), "--in-place"]):
        assert run.returncode == 2, (run.stdout, run.stderr)
        one_line_error(run, "not-a-regular-file")
        assert link.is_symlink() and st.read_bytes() == before


# --- item 6: a read-only target is refused in place and by rewrite alike --------------------------


# Root may write anything, so a read-only file means nothing to it: the CLI drops to an unprivileged
# user first. The interpreter's own files need not be readable by that user: everything the command
# uses is imported before the switch.
_UNPRIVILEGED = """
import os, sys
import blueprint_format.api, blueprint_format.cli, blueprint_format.render, blueprint_format.validator
import converters.cli, converters.model_card, converters.model_folder, converters.registry
import converters.safetensors_header
import encodings.utf_16_be  # rfc8785 sorts member names by their UTF-16 code units
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
sys.exit(blueprint_format.cli.main(sys.argv[1:]))
"""


def _run_unprivileged(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", _UNPRIVILEGED, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )


def test_a_read_only_target_is_refused_both_ways(model: tuple[Path, Path]) -> None:
    st, bp_file = model
    folder = Path(tempfile.mkdtemp(prefix="readonly-"))
    try:
        folder.chmod(0o777)  # the folder is writable: only the file's own mode says no
        target = folder / "model.safetensors"
        shutil.copy(st, target)
        target.chmod(0o666)
        blueprint = folder / "bp.json"
        shutil.copy(bp_file, blueprint)
        blueprint.chmod(0o444)
        run = _run_unprivileged("embed", str(blueprint), str(target), "--reserve", "64K")
        assert run.returncode == 0, run.stderr  # a writable copy with room to update in place
        target.chmod(0o444)
        before = target.read_bytes()
        for extra in ((), ("--in-place",), ("--no-in-place",)):
            run = _run_unprivileged("strip", str(target), *extra)
            assert run.returncode == 2, (extra, run.stdout, run.stderr)
            assert "write-failed" in run.stderr and "Traceback" not in run.stderr
            assert target.read_bytes() == before and stat.S_IMODE(target.stat().st_mode) == 0o444
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_validate_json_report_names_the_fifo(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path / "in.json")
    (run,) = run_batch(["validate", "--json", str(fifo), str(MINIMAL)])
    assert run.returncode == 2
    reports = json.loads(run.stdout)
    assert reports[0]["errors"][0]["code"] == "not-a-regular-file"
    assert reports[1]["valid"] is True
