"""Members added by minor versions (SPEC 14): the lowest version a producer declares, and the
validator's refusal of a newer member in an older document, both from one table."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import blueprint_format as bf
from blueprint_format._version import (
    MEMBERS_SINCE,
    SPEC_VERSION,
    SUPPORTED_MINOR,
    newer_members,
    required_spec_version,
)

VALID = Path(__file__).resolve().parents[2] / "spec" / "compliance" / "valid"


def _doc(name: str) -> dict:
    return json.loads((VALID / f"{name}.json").read_text(encoding="utf-8"))


def test_the_table_covers_every_minor_up_to_the_supported_one() -> None:
    assert max(MEMBERS_SINCE) == SUPPORTED_MINOR == int(SPEC_VERSION.split(".")[1])


def test_lowest_version_follows_the_members_used() -> None:
    assert required_spec_version(_doc("minimal")) == "1.0.0"
    with_stability = _doc("stability")
    assert required_spec_version(with_stability) == "1.1.0"
    assert required_spec_version(bf.from_json(with_stability)) == "1.1.0"  # the models walk alike
    only_interval = copy.deepcopy(with_stability)
    del only_interval["domains"][0]["stability"]
    assert required_spec_version(only_interval) == "1.1.0"


def test_a_1_0_document_with_1_1_members_is_refused_at_each_of_them() -> None:
    doc = _doc("stability")
    doc["spec_version"] = "1.0.3"
    expected = sorted(p for p, _ in newer_members(doc, 0))
    assert len(expected) == 1 + len(doc["modules"])  # the stability and one interval per module
    issues = [i for i in bf.validate(doc) if i.is_error]
    assert sorted(i.path for i in issues) == expected and {i.code for i in issues} == {"unknown-field"}
    doc["spec_version"] = "1.1.0"
    assert bf.validate(doc) == []
