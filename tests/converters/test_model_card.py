"""Model cards: front matter entry + generated section; everything else survives byte for byte."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blueprint_format import BlueprintIOError, ContainerError, digest, dumps
from converters import BLUEPRINT_FILE
from converters.model_card import BEGIN, EMBED_LIMIT, END, ModelCardConverter, embed_in_text, remove_from_text
from tests.converters.converter_blueprints import blueprints, build_blueprint

CONV = ModelCardConverter()

CARD = """---
language: en
license: apache-2.0  # a comment that must survive
tags:
- sentence-transformers
- feature-extraction
widget:
  - text: "Hello: world"
    example_title: 'quoted'
base: &anchor
  a: 1
other: *anchor
---

# all-MiniLM-L6-v2

Some text with | pipes | and `code`.
"""


def other_keys(text: str) -> dict:
    front = text.split("---", 2)[1] if text.startswith("---") else ""
    data = yaml.safe_load(front) or {}
    return {k: v for k, v in data.items() if k != "gradient_blueprint"}


_KEY = st.from_regex(r"\A[a-z][a-z_]{0,10}\Z").filter(lambda k: k != "gradient_blueprint")
_SCALAR = st.one_of(st.integers(-1000, 1000), st.text(max_size=20), st.booleans(), st.none())
# Non-empty: stripping a card whose front matter was empty drops it (see test_empty_front_matter).
_META = st.dictionaries(_KEY, _SCALAR | st.lists(_SCALAR, max_size=3), min_size=1, max_size=5)
_LINE = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=40).filter(
    lambda s: "gradient-blueprint" not in s and not s.startswith("---")
)


@st.composite
def cards(draw: st.DrawFn) -> str:
    nl = draw(st.sampled_from(["\n", "\r\n"]))
    lines = draw(st.lists(_LINE, max_size=6))
    body = nl.join(lines) + nl if lines else ""
    meta = draw(st.none() | _META)
    if meta is None:
        return body
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return "---" + nl + front.replace("\n", nl) + "---" + nl + body


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bp=blueprints(), previous=st.none() | blueprints(max_modules=2), card=cards(), lone=st.booleans())
def test_round_trip_any_blueprint_any_card(bp, previous, card, lone) -> None:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "README.md"
        path.write_bytes(card.encode("utf-8"))
        if previous is not None:
            CONV.write(path, previous)
        before = path.read_bytes()
        CONV.write(path, bp)
        text = path.read_bytes().decode("utf-8")
        if lone and len(dumps(bp)) <= EMBED_LIMIT:
            (Path(tmp) / BLUEPRINT_FILE).unlink()  # a lone card is self-contained
        assert dumps(CONV.read(path)) == dumps(bp)
        assert text.count(BEGIN) == 1 and text.count(END) == 1
        loaded = ModelCard.load(path)
        assert loaded.data.to_dict()["gradient_blueprint"]["digest"] == digest(bp)
        assert other_keys(text) == other_keys(card)
        # Removing gives back the card exactly as it was before the blueprint came.
        CONV.remove(path)
        if previous is None:
            assert path.read_bytes() == card.encode("utf-8")
        else:
            assert remove_from_text(before.decode()) == card
        assert CONV.read(path) is None


def test_empty_front_matter_survives_embed_and_strip(tmp_path: Path) -> None:
    # An empty front matter that was there before is kept (embed records it in its entry); one
    # that embed created is dropped again.
    path = tmp_path / "README.md"
    for text in ("---\n---\nbody\n", "---\n\n---\nbody\n", "body\n"):
        path.write_text(text)
        CONV.write(path, build_blueprint([("a", 1)]))
        CONV.remove(path)
        assert path.read_text() == text


def test_other_content_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_text(CARD)
    bp = build_blueprint([("encoder.layer.0", 10), ("encoder.layer.1", 20)], ("general", "code"))
    CONV.write(path, bp)
    text = path.read_text()
    front, body = text.split("---\n", 2)[1:]
    original_front, original_body = CARD.split("---\n", 2)[1:]
    assert front.startswith(original_front)  # entry appended after every original line
    assert body.startswith(original_body)
    assert "license: apache-2.0  # a comment that must survive" in front
    card = ModelCard.load(path)
    assert card.data.to_dict()["license"] == "apache-2.0"
    assert card.data.to_dict()["gradient_blueprint"]["modules"] == 2
    assert card.data.to_dict()["gradient_blueprint"]["domains"] == ["general", "code"]
    assert card.data.to_dict()["gradient_blueprint"]["selected"] == 1
    assert (tmp_path / BLUEPRINT_FILE).read_bytes() == dumps(bp)


def test_reembed_replaces_section_and_entry(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_text(CARD + "\n## Trailer written after the first embed\n")
    CONV.write(path, build_blueprint([("a", 1)]))
    text = path.read_text()
    path.write_text(text + "More text after the section.\n")
    bp2 = build_blueprint([("a", 1), ("b", 2)], description="second")
    CONV.write(path, bp2)
    text2 = path.read_text()
    assert text2.count(BEGIN) == 1 and text2.count("gradient_blueprint:") == 1
    assert text2.endswith(END + "\nMore text after the section.\n")
    assert CONV.read(path) == bp2


def test_table_and_heavy_tail_lines(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    bp = build_blueprint(
        [("attn.0", 10), ("ffn.0", 20), ("attn.1", 5)],
        ("a", "b"),
        combined=False,
        means=[[0.05, 0.03, 0.04], [0.01, 0.05, 0.02]],
    )
    CONV.write(path, bp)
    text = path.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    # Weighted sum over domains (0.5 each), in document order without combined ranks.
    assert rows == ["| `attn.0` | 0.03 | 0.25 |", "| `ffn.0` | 0.04 | - |", "| `attn.1` | 0.03 | 0.25 |"]
    assert "- `a`: grad_norm_mean, csn-mle, status ok, rank-size exponent 0.75" in text
    assert "top 10% of modules hold 40%" in text
    bp2 = build_blueprint(
        [("attn.0", 10), ("ffn.0", 20), ("attn.1", 5)],
        ("a", "b"),
        means=[[0.05, 0.03, 0.04], [0.01, 0.05, 0.02]],
    )
    CONV.write(path, bp2)
    rows = [line.split(" | ")[0] for line in path.read_text().splitlines() if line.startswith("| `")]
    assert rows == ["| `ffn.0`", "| `attn.0`", "| `attn.1`"]  # combined-rank order


def test_crlf_card_stays_crlf(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    original = CARD.replace("\n", "\r\n").encode()
    path.write_bytes(original)
    CONV.write(path, build_blueprint([("a", 1)]))
    data = path.read_bytes()
    assert b"\n" not in data.replace(b"\r\n", b"")
    CONV.remove(path)
    assert path.read_bytes() == original


def test_sidecar_preferred_only_when_digest_matches(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    bp = build_blueprint([("a", 1)])
    CONV.write(path, bp)
    other = build_blueprint([("zzz", 1)])
    (tmp_path / BLUEPRINT_FILE).write_bytes(dumps(other))  # stale or foreign file
    assert CONV.read(path) == bp  # falls back to the embedded copy
    (tmp_path / BLUEPRINT_FILE).write_text("{broken")
    assert CONV.read(path) == bp


def test_large_blueprint_lives_only_in_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    bp = build_blueprint([(f"encoder.layer.{i}.module", i + 1) for i in range(150)])
    assert len(dumps(bp)) > EMBED_LIMIT
    CONV.write(path, bp)
    assert "```json" not in path.read_text()
    assert CONV.read(path) == bp
    (tmp_path / BLUEPRINT_FILE).unlink()
    with pytest.raises(ContainerError) as info:
        CONV.read(path)
    assert info.value.code == "no-blueprint" and "missing" in str(info.value)


def test_remove_deletes_matching_sidecar_only(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    CONV.write(path, build_blueprint([("a", 1)]))
    CONV.remove(path)
    assert not (tmp_path / BLUEPRINT_FILE).exists()
    CONV.write(path, build_blueprint([("a", 1)]))
    (tmp_path / BLUEPRINT_FILE).write_bytes(dumps(build_blueprint([("b", 1)])))
    CONV.remove(path)
    assert (tmp_path / BLUEPRINT_FILE).exists()  # not the card's blueprint: left alone


@pytest.mark.parametrize(
    "text,location",
    [
        ("---\nlicense: [unclosed\n---\nbody\n", "line 3"),
        ("---\nkey: value\n  bad: indent\n---\n", "line 3"),
        ("---\n\tkey: tab\n---\n", "line 2"),
    ],
    ids=["unclosed-flow", "bad-indent", "tab"],
)
def test_broken_yaml_is_bad_container_with_location(tmp_path: Path, text: str, location: str) -> None:
    path = tmp_path / "README.md"
    path.write_text(text)
    for op in (lambda: CONV.read(path), lambda: CONV.write(path, build_blueprint([("a", 1)]))):
        with pytest.raises(ContainerError) as info:
            op()
        assert info.value.code == "bad-container" and location in str(info.value), str(info.value)
    assert path.read_text() == text and not (tmp_path / BLUEPRINT_FILE).exists()


@pytest.mark.parametrize(
    "text",
    [
        "---\nlicense: mit\nno closing line\n",
        "---\n- a list\n- not a mapping\n---\n",
        f"body\n{BEGIN}\n{BEGIN}\n{END}\n",
        f"body\n{END}\n{BEGIN}\n",
        "---\ngradient_blueprint: 5\n---\n",
    ],
    ids=["unclosed", "not-mapping", "two-begins", "reversed", "entry-not-mapping"],
)
def test_malformed_cards(tmp_path: Path, text: str) -> None:
    path = tmp_path / "README.md"
    path.write_text(text)
    with pytest.raises(ContainerError) as info:
        CONV.read(path)
    assert info.value.code == "bad-container"


def test_unsafe_file_name_in_front_matter(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    for name in ("../../etc/passwd", "/etc/passwd", "a\\\\b.json"):
        path.write_text(f"---\ngradient_blueprint:\n  digest: sha256:{'0' * 64}\n  file: '{name}'\n---\n")
        with pytest.raises(ContainerError) as info:
            CONV.read(path)
        assert info.value.code == "unsafe-path", name


def test_not_utf8_card(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_bytes(b"---\nlicense: mit\n---\n\xff\xfe")
    with pytest.raises(ContainerError) as info:
        CONV.read(path)
    assert info.value.code == "bad-container" and "byte offset" in str(info.value)


def test_hand_written_entry_with_unindented_list_is_replaced_cleanly() -> None:
    text = "---\ngradient_blueprint:\n- x\nlicense: mit\n---\n"
    out = embed_in_text(text, build_blueprint([("a", 1)]))
    data = yaml.safe_load(out.split("---\n")[1])
    assert list(data) == ["gradient_blueprint", "license"] and data["license"] == "mit"


@pytest.mark.parametrize(
    "text",
    ["---\ngradient_blueprint: 1\nlicense: mit\ngradient_blueprint: 2\n---\n", "---\n{license: mit}\n---\n"],
    ids=["duplicate-key", "flow-mapping"],
)
def test_edit_that_cannot_be_made_safely_is_refused(text: str) -> None:
    # The result is parsed again and compared: rather than corrupt the card, nothing is written.
    with pytest.raises(ContainerError) as info:
        embed_in_text(text, build_blueprint([("a", 1)]))
    assert info.value.code == "bad-container"


def test_missing_card_is_io_error_for_read(tmp_path: Path) -> None:
    with pytest.raises(BlueprintIOError):
        CONV.read(tmp_path / "README.md")


@pytest.mark.slow
def test_real_minilm_card(tmp_path: Path, minilm_dir: Path) -> None:
    path = tmp_path / "README.md"
    original = (minilm_dir / "README.md").read_bytes()
    path.write_bytes(original)
    before = ModelCard.load(path).data.to_dict()
    bp = build_blueprint([("encoder.layer.0", 10), ("encoder.layer.1", 20)])
    CONV.write(path, bp)
    after = ModelCard.load(path).data.to_dict()
    assert {k: v for k, v in after.items() if k != "gradient_blueprint"} == before
    assert CONV.read(path) == bp
    CONV.remove(path)
    assert path.read_bytes() == original


@pytest.mark.parametrize("nl", ["\n", "\r\n"])
def test_body_without_final_newline_gets_blank_line_and_comes_back(tmp_path: Path, nl: str) -> None:
    path = tmp_path / "README.md"
    original = f"---{nl}license: mit{nl}---{nl}| a | b |{nl}|---|---|{nl}| 1 | 2 |".encode()
    path.write_bytes(original)
    CONV.write(path, build_blueprint([("a", 1)]))
    text = path.read_bytes().decode()
    assert f"| 1 | 2 |{nl}{nl}{BEGIN}{nl}" in text  # a blank line ends the table before the section
    CONV.write(path, build_blueprint([("a", 1)], description="again"))  # re-embed keeps the note
    CONV.remove(path)
    assert path.read_bytes() == original
