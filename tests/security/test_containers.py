"""Hostile containers (issue 10, items 8, 12, 15, 16, 17, 18, 20, 21): safetensors headers judged
exactly as the safetensors library judges them, model cards that round-trip or are refused with a
code, links out of a card's folder, and binding against files that are not safetensors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from blueprint_format import BlueprintError, dump, dumps, read_safetensors_header
from blueprint_format._version import SUPPORTED_MINOR
from blueprint_format.jsonio import canonical_bytes
from converters import embed, extract, strip
from converters.model_card import ModelCardConverter
from tests.converters.converter_blueprints import blueprint_for_tensors, build_blueprint
from tests.converters.helpers import small_onnx_model, write_safetensors
from tests.security.helpers import one_line_error, run_batch, run_cli

T = '"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'


def _file(tmp_path: Path, header: str, buffer: bytes, name: str = "h.safetensors") -> Path:
    raw = header.encode("utf-8", "surrogatepass")
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + buffer)
    return path


def library_verdict(path: Path) -> tuple[bool, object]:
    """What the safetensors library makes of the file: (accepted, (tensor names, metadata))."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return True, (sorted(f.keys()), f.metadata())
    except Exception as exc:  # the library raises its own error type (and others) for bad files
        return False, type(exc).__name__


def our_verdict(path: Path) -> tuple[bool, object]:
    try:
        info = read_safetensors_header(path)
    except BlueprintError as exc:
        assert exc.code in ("bad-container", "header-too-large"), exc
        return False, exc.code
    return True, (sorted(t.name for t in info.tensors), info.metadata or None)


# (header text, buffer): each probes one rule of the format; the library's verdict is the oracle.
HEADERS = {
    "plain": ("{" + T + "}", b"\0" * 4),
    "nan-in-unknown-member": ('{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":NaN}}', b"\0" * 4),
    "unknown-member": ('{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":[1,{"y":2}]}}', b"\0" * 4),
    "boolean-shape": ('{"t":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}', b"\0" * 4),
    "boolean-offsets": ('{"t":{"dtype":"BOOL","shape":[1],"data_offsets":[false,true]}}', b"\0"),
    "two-metadata": ('{"__metadata__":{"a":"1"},"__metadata__":{"b":"2"},' + T + "}", b"\0" * 4),
    "two-metadata-escaped": ('{"__metadata__":{},"__metadat\\u0061__":{},' + T + "}", b"\0" * 4),
    "tensor-twice": ("{" + T + "," + T + "}", b"\0" * 4),
    "field-twice": ('{"t":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
    "unknown-field-twice": ('{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1,"x":2}}', b"\0" * 4),
    "metadata-null": ('{"__metadata__":null,' + T + "}", b"\0" * 4),
    "metadata-number": ('{"__metadata__":{"a":1},' + T + "}", b"\0" * 4),
    "metadata-key-twice": ('{"__metadata__":{"a":"b","a":"c"}}', b""),
    "lone-surrogate": ('{"__metadata__":{"a":"\\ud800"},' + T + "}", b"\0" * 4),
    "surrogate-pair": ('{"__metadata__":{"a":"\\ud83d\\ude00"},' + T + "}", b"\0" * 4),
    "float-shape": ('{"t":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', b"\0" * 4),
    "exponent-shape": ('{"t":{"dtype":"F32","shape":[1E0],"data_offsets":[0,4]}}', b"\0" * 4),
    "minus-zero-offset": ('{"t":{"dtype":"F32","shape":[1],"data_offsets":[-0,4]}}', b"\0" * 4),
    "beyond-u64": ('{"t":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,4]}}', b"\0" * 4),
    "u64-max-times-zero": ('{"t":{"dtype":"F32","shape":[18446744073709551615,0],"data_offsets":[0,0]}}', b""),
    "product-overflows": ('{"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}', b"\0" * 4),
    "5000-digit-integer": ('{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + "9" * 5000 + "}}", b"\0" * 4),
    "300-digit-integer": ('{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + "9" * 300 + "}}", b"\0" * 4),
    "310-digit-integer": ('{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + "1" * 310 + "}}", b"\0" * 4),
    "double-overflow": ('{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1e400}}', b"\0" * 4),
    "nested-125": ('{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + "[" * 125 + "]" * 125 + "}}", b"\0" * 4),
    "nested-126": ('{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + "[" * 126 + "]" * 126 + "}}", b"\0" * 4),
    "leading-space": (" \n\t{" + T + "}", b"\0" * 4),
    "trailing-space": ("{" + T + "}\n\t  ", b"\0" * 4),
    "trailing-nul": ("{" + T + "}\0", b"\0" * 4),
    "byte-order-mark": ("\ufeff{" + T + "}", b"\0" * 4),
    "three-offsets": ('{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}}', b"\0" * 4),
    "gap": ('{"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8),
    "trailing-buffer": ("{" + T + "}", b"\0" * 5),
    "f4-odd": ('{"t":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}', b"\0" * 2),
    "f4-even": ('{"t":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}}', b"\0" * 2),
    "f6": ('{"t":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}}', b"\0" * 3),
    "fnuz": ('{"t":{"dtype":"F8_E4M3FNUZ","shape":[2],"data_offsets":[0,2]}}', b"\0" * 2),
    "lowercase-dtype": ('{"t":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
    "missing-shape": ('{"t":{"dtype":"F32","data_offsets":[0,4]}}', b"\0" * 4),
    "top-level-array": ("[]", b""),
    "tensor-null": ('{"t":null}', b""),
    "zero-size-ties": (
        '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"u":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},'
        '"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
        b"\0" * 8,
    ),
    "zero-size-past-end": (
        '{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"u":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}}',
        b"\0" * 4,
    ),
    "replaced-entry-with-a-repeated-field": (
        '{"t":{"dtype":"F32","shape":[0],"data_offsets":[0,0],"dtype":"F32"},' + T + "}",
        b"\0" * 4,
    ),
    "replaced-entry-with-wrong-sizes": ('{"t":{"dtype":"F32","shape":[9],"data_offsets":[0,0]},' + T + "}", b"\0" * 4),
    "replaced-entry-with-a-huge-number": (
        '{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1e400},' + T + "}",
        b"\0" * 4,
    ),
    "replaced-metadata-value-not-a-string": ('{"__metadata__":{"a":1,"a":"b"},' + T + "}", b"\0" * 4),
    "control-character": ('{"__metadata__":{"a":"x\ty"},' + T + "}", b"\0" * 4),
    "empty-name": ('{"":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
}


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_headers_are_judged_as_the_safetensors_library_judges_them(tmp_path: Path, name: str) -> None:
    """Item 15 (and 8 for headers): accept exactly what the library accepts, see the same tensors."""
    path = _file(tmp_path, *HEADERS[name])
    expected = library_verdict(path)
    got = our_verdict(path)
    assert got[0] == expected[0], (name, got, expected)
    if expected[0]:
        assert got == expected


def test_a_boolean_never_reaches_the_structure_digest(tmp_path: Path) -> None:
    path = _file(tmp_path, '{"t":{"dtype":"F32","shape":[true,1],"data_offsets":[0,4]}}', b"\0" * 4)
    run = run_cli("validate", str(Path(__file__).parents[2] / "spec/compliance/valid/minimal.json"), "--against", str(path))
    assert run.returncode == 1
    one_line_error(run, "bad-container")


# --- item 21: binding needs a safetensors file or folder ------------------------------------------


def test_binding_against_onnx_is_unsupported(tmp_path: Path) -> None:
    import onnx

    onnx_path = tmp_path / "model.onnx"
    onnx.save(small_onnx_model(), str(onnx_path))
    bp = tmp_path / "bp.json"
    dump(build_blueprint([("W", 12)]), bp)
    run = run_cli("validate", str(bp), "--against", str(onnx_path))
    assert run.returncode == 1
    one_line_error(run, "unsupported-container")
    assert "header-too-large" not in run.stdout + run.stderr


# --- items 16 and 20: what embedding keeps and refuses -------------------------------------------


def test_embedding_a_newer_minor_document_keeps_its_unknown_members(tmp_path: Path) -> None:
    model = write_safetensors(tmp_path / "model.safetensors")
    doc = json.loads(dumps(blueprint_for_tensors(read_safetensors_header(model).tensors)))
    doc["spec_version"] = f"1.{SUPPORTED_MINOR + 1}.0"  # a minor this reader does not know
    doc["future"] = {"kept": True}
    bp_file = tmp_path / "newer.json"
    bp_file.write_text(json.dumps(doc))
    embedded, run = run_batch(["embed", str(bp_file), str(model)], ["extract", str(model)])
    assert embedded.returncode == 0 and run.returncode == 0, (embedded.stderr, run.stderr)
    assert run.stdout.encode().rstrip(b"\n") == canonical_bytes(doc)


def test_a_bom_before_an_embedded_blueprint_is_not_utf8(tmp_path: Path) -> None:
    model = write_safetensors(tmp_path / "model.safetensors")
    text = dumps(blueprint_for_tensors(read_safetensors_header(model).tensors)).decode()
    bad = write_safetensors(tmp_path / "bom.safetensors", {"gradient_blueprint": "\ufeff" + text})
    run = run_cli("extract", str(bad))
    assert run.returncode == 1
    one_line_error(run, "not-utf8")


# --- item 12: YAML alias expansion -----------------------------------------------------------------

ALIAS_BOMB = "---\n" + "\n".join(
    [f"a0: &a0 [{', '.join(['x'] * 10)}]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
) + "\n---\n# Model\n"


def test_an_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    card = tmp_path / "README.md"
    card.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 1000  # a few hundred bytes
    bp = tmp_path / "bp.json"
    dump(build_blueprint([("m", 1)]), bp)
    runs = run_batch(["embed", str(bp), str(card)], ["strip", str(card)], ["extract", str(card)], timeout=90)
    for run in runs:
        assert run.returncode == 1, (run.stdout, run.stderr)
        one_line_error(run, "bad-container")
    assert card.read_text() == ALIAS_BOMB


def test_a_few_aliases_still_work(tmp_path: Path) -> None:
    card = tmp_path / "README.md"
    text = "---\nbase: &b {a: 1}\nother: *b\n---\n# Model\n"
    card.write_text(text)
    bp = build_blueprint([("m", 1)])
    embed(bp, card)
    assert extract(card) == bp
    strip(card)
    assert card.read_text() == text


# --- item 17: cards come back byte for byte --------------------------------------------------------

ROUND_TRIPS = {
    "empty-front-matter": "---\n---\n# Model\n",
    "blank-front-matter": "---\n\n---\n# Model\n",
    "cr-only": "# Model\rtext\r",
    "crlf-no-final-newline": "---\r\na: 1\r\n---\r\n# Model",
    "closing-at-end-of-file": "---\ntitle: x\n---",
    "empty-front-matter-at-end-of-file": "---\n---",
    "markers-in-a-fence": (
        "# Model\n\nEmbedding writes:\n\n```\n<!-- gradient-blueprint:begin -->\n...\n"
        "<!-- gradient-blueprint:end -->\n```\n"
    ),
    "markers-in-a-tilde-fence": "---\na: 1\n---\n~~~~md\n<!-- gradient-blueprint:end -->\n~~~~\n",
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIPS))
def test_cards_round_trip_byte_for_byte(tmp_path: Path, name: str) -> None:
    card = tmp_path / "README.md"
    card.write_bytes(ROUND_TRIPS[name].encode())
    bp = build_blueprint([("m", 1)])
    embed(bp, card)
    assert extract(card) == bp
    assert ModelCardConverter().read(card) == bp
    strip(card)
    assert card.read_bytes() == ROUND_TRIPS[name].encode()


def test_a_card_ending_inside_a_fence_is_refused(tmp_path: Path) -> None:
    card = tmp_path / "README.md"
    card.write_text("# Model\n\n```python\nprint(1)\n")
    bp = tmp_path / "bp.json"
    dump(build_blueprint([("m", 1)]), bp)
    run = run_cli("embed", str(bp), str(card))
    assert run.returncode == 1
    one_line_error(run, "bad-container")


# --- item 18: a card's file may not lead out of its folder ------------------------------------------


def test_a_card_file_linking_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    dump(build_blueprint([("m", 1)]), outside)
    folder = tmp_path / "model"
    folder.mkdir()
    card = folder / "README.md"
    card.write_text("# Model\n")
    embed(build_blueprint([("m", 1)]), card)
    (folder / "blueprint.json").unlink()
    (folder / "blueprint.json").symlink_to(outside)
    for run in run_batch(["extract", str(card)], ["extract", str(folder)]):
        assert run.returncode == 1, (run.stdout, run.stderr)
        one_line_error(run, "unsafe-path")
    assert outside.exists()


# --- model cards: what the YAML reader never does, and its size limits -------------------------------


def test_yaml_tags_never_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    card = tmp_path / "README.md"
    card.write_text(f'---\nx: !!python/object/apply:os.system ["touch {marker}"]\n---\n# Model\n')
    run = run_cli("extract", str(card))
    assert run.returncode == 1
    one_line_error(run, "bad-container")
    assert not marker.exists()


def test_card_limits(tmp_path: Path) -> None:
    cards = []
    for i, content in enumerate(
        [
            b"---\n" + b"k: " + b"v" * (1024 * 1024 + 1) + b"\n---\n# Model\n",  # front matter over 1 MiB
            b"---\ntitle: caf\xe9\n---\n# Model\n",  # not UTF-8
        ]
    ):
        card = tmp_path / f"{i}.md"
        card.write_bytes(content)
        cards.append(card)
    for run in run_batch(*(["extract", str(card)] for card in cards)):
        assert run.returncode == 1
        one_line_error(run, "bad-container")


# --- item 8: a checkpoint holding an integer the restricted loader cannot read ---------------------


def test_a_huge_integer_in_a_checkpoint_is_a_bad_container_with_a_reason(tmp_path: Path) -> None:
    import torch

    doc = json.loads(dumps(build_blueprint([("w", 4)])))
    doc["extensions"] = {"x-big": 10**4000}  # pickled with LONG4, which torch's safe loader lacks
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(4), "__gradient_blueprint__": doc}, str(path))
    (run,) = run_batch(["extract", str(path)])
    assert run.returncode == 1
    one_line_error(run, "bad-container")
    assert "LONG4" in run.stderr and "unsafe-checkpoint" not in run.stderr
