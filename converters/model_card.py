"""Blueprints in a Hugging Face model card (README.md), editing only what belongs to the blueprint.

A card is optional YAML front matter between `---` lines, then Markdown. Embedding changes two
places and nothing else, so all other metadata, text, key order and line endings survive byte for
byte:

* the top-level front-matter key `gradient_blueprint`, a compact mapping (spec_version, digest,
  file, modules, domains, selected, trainable_fraction), inserted before the closing `---` or
  replacing the previous block in place;
* a generated Markdown section between the exact lines `<!-- gradient-blueprint:begin -->` and
  `<!-- gradient-blueprint:end -->` (table Layer | Grad norm | k*, the heavy-tail line per domain,
  and, when the canonical JSON is at most 32 KiB, the whole blueprint in a fenced json block),
  appended after a blank line or replacing the previous section.

The edit is textual (huggingface_hub's ModelCard re-serializes the YAML and would reorder or
restyle other keys); the result is checked by parsing both versions with yaml.safe_load: every
other key must be unchanged and in the same order, or nothing is written.

The full blueprint is written to `blueprint.json` beside the card. Extraction prefers that file
when its digest equals the front matter's, then the embedded block, and otherwise reports
no-blueprint.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blueprint_format import Blueprint, BlueprintError, atomic_write_bytes, digest, load
from blueprint_format.errors import ContainerError, make_error
from blueprint_format.models import Module
from blueprint_format.paths import read_regular_file
from blueprint_format.semantic import unsafe_path_reason
from converters.base import (
    BLUEPRINT_FILE,
    METADATA_KEY,
    Converter,
    WriteResult,
    bad_container,
    canonical_text,
    io_error,
    parse_embedded,
    same_file,
)

BEGIN = "<!-- gradient-blueprint:begin -->"
END = "<!-- gradient-blueprint:end -->"
#: Inside the section: the body ended without a newline before the section was appended.
NO_FINAL_NEWLINE = "<!-- gradient-blueprint:body-had-no-final-newline -->"
#: Front matter key (the same name as the key/value metadata key).
FRONT_MATTER_KEY = METADATA_KEY
#: Blueprints whose canonical JSON is at most this size are also embedded in the card's body.
EMBED_LIMIT = 32 * 1024
#: Cards larger than this are refused before parsing.
MAX_CARD_BYTES = 16 * 1024 * 1024
#: Front matter larger than this is refused before YAML parsing (bounds time and memory).
MAX_FRONT_MATTER_BYTES = 1024 * 1024
#: Front matter may use YAML aliases only as long as it expands to at most this many nodes.
MAX_EXPANDED_NODES = 1_000_000
#: Rows shown in the generated table; larger blueprints point to blueprint.json for the rest.
MAX_TABLE_ROWS = 500

_OPEN_RE = re.compile(r"\A(\ufeff?)---[ \t]*(\r\n|\n)")
_CLOSE_RE = re.compile(r"^---[ \t]*(?:\r\n|\n|\Z)", re.MULTILINE)
_KEY_RE = re.compile(r"""^(["']?)gradient_blueprint\1[ \t]*:""")
_LINE_RE = re.compile(r"[^\n]*\n|[^\n]+\Z")
#: A CommonMark code fence line: up to 3 spaces, then 3 or more backticks or tildes, then the rest.
_FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
#: Inside our front-matter entry: the card's front matter existed but was empty before the embed
#: (so that strip keeps an empty front matter instead of dropping it as one it created).
EMPTY_FRONT_MATTER = "  # gradient-blueprint: the front matter was empty before this entry"


def _lines(text: str) -> list[str]:
    """Lines with their endings (only LF splits; CR stays with its line, unlike str.splitlines)."""
    return _LINE_RE.findall(text)


def _bare(line: str) -> str:
    return line.rstrip("\r\n")


@dataclass
class Card:
    """A card split into prefix (BOM), front matter YAML text and body, with its newline style."""

    text: str
    nl: str
    has_front_matter: bool
    bom: str = ""
    opening: str = ""  # the opening `---` line with its newline
    yaml_text: str = ""  # between the opening and closing lines, each line with its newline
    closing: str = ""  # the closing `---` line with its newline (if any)
    body: str = ""

    def render(self) -> str:
        if not self.has_front_matter:
            return self.bom + self.body
        return self.bom + self.opening + self.yaml_text + self.closing + self.body


def split_card(text: str, where: str = "card") -> Card:
    """Split card text into its parts without changing a byte (render() gives the text back)."""
    # The style of the first line ending (as huggingface_hub does); mixed files keep each line's own.
    first = text.find("\n")
    nl = "\r\n" if first > 0 and text[first - 1] == "\r" else "\n"
    m = _OPEN_RE.match(text)
    if not m:
        bom = "\ufeff" if text.startswith("\ufeff") else ""
        return Card(text=text, nl=nl, has_front_matter=False, bom=bom, body=text[len(bom) :])
    close = _CLOSE_RE.search(text, m.end())
    if close is None:
        raise bad_container(where, "front matter opened with '---' is never closed", "line 1")
    return Card(
        text=text,
        nl=nl,
        has_front_matter=True,
        bom=m.group(1),
        opening=text[len(m.group(1)) : m.end()],
        yaml_text=text[m.end() : close.start()],
        closing=text[close.start() : close.end()],
        body=text[close.end() :],
    )


def parse_front_matter(card: Card, where: str) -> dict[str, Any]:
    """The front matter as a dict ({} when absent or empty). Broken YAML is bad-container with its line."""
    import yaml

    if not card.has_front_matter or not card.yaml_text.strip():
        return {}
    if len(card.yaml_text.encode("utf-8")) > MAX_FRONT_MATTER_BYTES:
        raise bad_container(where, f"front matter exceeds {MAX_FRONT_MATTER_BYTES} bytes")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: same data, faster
    try:
        _refuse_expansion(card.yaml_text, loader, where)
        data = yaml.load(card.yaml_text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        location = f"line {mark.line + 2}, column {mark.column + 1}" if mark is not None else "front matter"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise bad_container(where, f"front matter is not valid YAML: {problem}", location) from None
    except RecursionError:
        raise bad_container(where, "front matter nests too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise bad_container(where, f"front matter is a YAML {type(data).__name__}, not a mapping", "line 2")
    return data


def _refuse_expansion(yaml_text: str, loader: Any, where: str) -> None:
    """Refuse front matter whose YAML aliases expand it beyond MAX_EXPANDED_NODES nodes.

    An alias (`*name`) shares a node; comparing or serialising the loaded data visits it once per
    reference, so ten levels of aliases to lists of ten cost ten billion visits from a few hundred
    bytes. The expanded size is counted on the composed node graph, each node once (linear time).
    """
    import yaml

    root = yaml.compose(yaml_text, Loader=loader)
    if root is None:
        return
    sizes: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _yaml_children(node)
        if children_done or not children:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_EXPANDED_NODES:
                raise bad_container(
                    where,
                    f"front matter expands to more than {MAX_EXPANDED_NODES} YAML nodes through aliases (*name)",
                )
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)


def _yaml_children(node: Any) -> list[Any]:
    value = node.value
    if isinstance(value, list):
        return [x for pair in value for x in (pair if isinstance(pair, tuple) else (pair,))]
    return []


def _block_span(lines: list[str]) -> tuple[int, int] | None:
    """Line range [start, end) of the top-level `gradient_blueprint` entry in front matter lines."""
    for i, line in enumerate(lines):
        if _KEY_RE.match(line):
            j = i + 1
            # The value continues on indented lines and on `- ` items (YAML allows those unindented).
            while j < len(lines) and (
                lines[j][:1] in (" ", "\t")
                or _bare(lines[j]).startswith("- ")
                or _bare(lines[j]) == "-"
                or not _bare(lines[j]).strip()
            ):
                j += 1
            # Trailing blank lines belong to whatever follows, not to our entry.
            while j > i + 1 and not _bare(lines[j - 1]).strip():
                j -= 1
            return i, j
    return None


def front_matter_entry(bp: Blueprint) -> dict[str, Any]:
    """The compact mapping stored under `gradient_blueprint` in the front matter."""
    entry: dict[str, Any] = {
        "spec_version": bp.spec_version,
        "digest": digest(bp),
        "file": BLUEPRINT_FILE,
        "modules": len(bp.modules),
        "domains": bp.domain_names,
        "selected": sum(1 for m in bp.modules if m.k_star is not None),
    }
    if bp.allocation.trainable_fraction is not None:
        entry["trainable_fraction"] = bp.allocation.trainable_fraction
    return entry


def _entry_yaml(entry: dict[str, Any], nl: str) -> str:
    import yaml

    text = yaml.safe_dump(
        {FRONT_MATTER_KEY: entry}, sort_keys=False, default_flow_style=False, allow_unicode=True, width=4096
    )
    return text.replace("\n", nl)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _fit_lines(bp: Blueprint) -> list[str]:
    """One line per domain that has a heavy-tail fit: statistic, method, status, exponent, top-10% share."""
    lines = []
    for d in bp.domains:
        fit = d.heavy_tail
        if fit is None:
            continue
        head = f"{fit.statistic}, {fit.method}, status {fit.status}"
        if fit.status == "ok":
            head += (
                f", {fit.exponent_convention} exponent {_fmt(fit.exponent)} (x_min {_fmt(fit.x_min)}, "
                f"KS {_fmt(fit.ks_distance)}, n={fit.sample_count})"
            )
        else:
            head += f" (n={fit.sample_count})"
        lines.append(f"- `{d.name}`: {head}; the top 10% of modules hold {fit.mass_shares.top_10:.0%}")
    return lines


def grad_column(bp: Blueprint, module: Module) -> float | None:
    """The table's Grad norm: the combined score, else the domain-weighted allocation statistic."""
    if module.combined is not None:
        return module.combined.score
    total = 0.0
    for name, weight in bp.effective_domain_weights().items():
        stats = module.stats.get(name)
        value = None if stats is None else getattr(stats, bp.allocation.statistic)
        if value is None:
            return None
        total += weight * value
    return total


def _cell(name: str) -> str:
    return "`" + name.replace("`", "'").replace("|", "\\|") + "`"


def generated_section(
    bp: Blueprint, nl: str, file_name: str = BLUEPRINT_FILE, *, body_had_no_final_newline: bool = False
) -> str:
    """The Markdown section between the begin/end markers (ending with a newline).

    `body_had_no_final_newline` records, in an invisible comment line, that embedding added a line
    break as well as the blank line before the section, so that strip can restore the card exactly.
    """
    canonical = canonical_text(bp).encode("utf-8")
    use_combined = all(m.combined is not None for m in bp.modules)
    weights = ", ".join(f"{k} {v:.3g}" for k, v in bp.effective_domain_weights().items())
    column = (
        f"Grad norm is the sum over domains of weight x `{bp.allocation.statistic}` "
        f"(weights: {weights})"
        + ("; rows in combined-rank order." if use_combined else "; rows in document order.")
    )
    modules = list(bp.modules)
    if use_combined:
        modules.sort(key=lambda m: m.combined.rank if m.combined is not None else 0)
    rule = bp.allocation.rule
    params = (
        rule.parameters
        if isinstance(rule.parameters, dict)
        else rule.parameters.model_dump(exclude_none=True)
    )
    rule_text = f"{rule.name}(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
    trainable = bp.allocation.trainable_fraction
    lines = [
        BEGIN,
        *([NO_FINAL_NEWLINE] if body_had_no_final_newline else []),
        "## Gradient blueprint",
        "",
        "Generated by `blueprint embed`; edits between the markers are replaced on the next embed.",
        "",
        f"- Spec version: {bp.spec_version}",
        f"- Digest: `{digest(bp)}`",
        f"- Full document: `{file_name}`"
        + (" (also embedded below)" if len(canonical) <= EMBED_LIMIT else ""),
        f"- Model: `{bp.model.name}` at revision `{bp.model.revision}`",
        f"- Allocation: {rule_text} on `{bp.allocation.statistic}`, {bp.allocation.granularity} granularity"
        + (f"; trainable fraction {trainable:.2%}" if trainable is not None else ""),
        "",
        column,
        "",
        "| Layer | Grad norm | k* |",
        "|---|---:|---:|",
    ]
    for m in modules[:MAX_TABLE_ROWS]:
        lines.append(f"| {_cell(m.name)} | {_fmt(grad_column(bp, m))} | {_fmt(m.k_star)} |")
    if len(modules) > MAX_TABLE_ROWS:
        lines += ["", f"{len(modules) - MAX_TABLE_ROWS} more modules are omitted here; see `{file_name}`."]
    fits = _fit_lines(bp)
    if fits:
        lines += ["", "Heavy tail per domain:", "", *fits]
    if len(canonical) <= EMBED_LIMIT:
        lines += ["", "```json", canonical.decode("utf-8"), "```"]
    lines.append(END)
    return nl.join(lines) + nl


def _fences(lines: list[str]) -> tuple[list[bool], int | None]:
    """Which lines belong to fenced code blocks (CommonMark), and the index of the line opening a
    fence that is still open at the end (None when every fence is closed)."""
    inside: list[bool] = []
    fence: tuple[str, int, int] | None = None  # character, length, line of the opening fence
    for i, line in enumerate(lines):
        m = _FENCE_RE.match(_bare(line))
        if fence is None:
            # A backtick fence's info string may not contain backticks (then it is inline code).
            opens = m is not None and not (m.group(1)[0] == "`" and "`" in m.group(2))
            if opens and m is not None:
                fence = (m.group(1)[0], len(m.group(1)), i)
            inside.append(opens)
        else:
            inside.append(True)
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= fence[1] and not m.group(2).strip():
                fence = None
    return inside, (fence[2] if fence is not None else None)


def _section_span(body: str, where: str) -> tuple[int, int] | None:
    """Character range of the generated section (begin line through end line and its newline).

    Marker lines inside fenced code blocks are text (a card may document the markers), not markers.
    """
    lines = _lines(body)
    fenced, _ = _fences(lines)
    begins = [i for i, line in enumerate(lines) if _bare(line) == BEGIN and not fenced[i]]
    ends = [i for i, line in enumerate(lines) if _bare(line) == END and not fenced[i]]
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise bad_container(where, f"the card must hold exactly one {BEGIN} ... {END} section, in that order")
    start = sum(len(x) for x in lines[: begins[0]])
    stop = sum(len(x) for x in lines[: ends[0] + 1])
    return start, stop


def _embedded_json(section: str) -> str | None:
    lines = [_bare(x) for x in _lines(section)]
    for i, line in enumerate(lines):
        if line.strip() == "```json":
            for j in range(i + 1, len(lines)):
                if lines[j].strip() == "```":
                    return "\n".join(lines[i + 1 : j])
            return None
    return None


def read_card_text(path: Path) -> str:
    """The card's text, bounded and strictly UTF-8 (bad-container otherwise), from a regular file."""
    data = read_regular_file(
        path, MAX_CARD_BYTES, lambda p, n: bad_container(p, f"card is {n} bytes; the limit is {MAX_CARD_BYTES}")
    )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_container(path, f"card is not UTF-8: {exc.reason}", f"byte offset {exc.start}") from None


def _safe_file_name(value: Any, where: Path) -> str:
    """The front matter's `file`, which obeys the spec's sidecar path rules (relative, inside the folder)."""
    reason = "is not a string" if not isinstance(value, str) else unsafe_path_reason(value)
    if reason is not None:
        raise ContainerError(make_error("unsafe-path", f"{where}: front matter file {value!r} {reason}"))
    return str(value)


def confined(path: Path, folder: Path, trusted_links: bool = False) -> Path:
    """`path` if it resolves inside `folder` (following symlinks), else `unsafe-path` (SPEC 11: a
    sidecar is a file in the blueprint's folder, not a link to one elsewhere).

    `trusted_links` skips the check, for folders this program laid out itself (a Hugging Face cache
    snapshot, whose files are links into the cache's blob store).
    """
    if trusted_links:
        return path
    resolved, home = path.resolve(), folder.resolve()
    if resolved != home and home not in resolved.parents:
        raise ContainerError(
            make_error("unsafe-path", f"{path} resolves to {resolved}, outside {home}; refusing to follow it")
        )
    return path


def embed_in_text(text: str, bp: Blueprint, where: str = "card", file_name: str = BLUEPRINT_FILE) -> str:
    """`text` with the blueprint's front matter entry and generated section set (nothing else changed).

    Whatever embed adds that strip cannot tell from the card itself is recorded (an empty front
    matter, a missing final newline), so that `remove_from_text(embed_in_text(t))` gives `t` back
    byte for byte.
    """
    card = split_card(text, where)
    old = parse_front_matter(card, where)
    entry = front_matter_entry(bp)
    entry["file"] = file_name
    _set_entry(card, _entry_yaml(entry, card.nl))
    span = _section_span(card.body, where)
    if span is not None:
        old_section = card.body[span[0] : span[1]]
        flag = any(_bare(line) == NO_FINAL_NEWLINE for line in _lines(old_section))
        section = generated_section(bp, card.nl, file_name, body_had_no_final_newline=flag)
        card.body = card.body[: span[0]] + section + card.body[span[1] :]
    else:
        _append_section(card, bp, file_name, where)
    new_text = card.render()
    _check_other_keys(old, new_text, where, expect=entry)
    return new_text


def _set_entry(card: Card, block: str) -> None:
    """Put our entry into the front matter: in place of the previous one, else at its end."""
    if not card.has_front_matter:
        card.has_front_matter = True
        card.opening, card.yaml_text, card.closing = "---" + card.nl, block, "---" + card.nl
        return
    lines = _lines(card.yaml_text)
    span = _block_span(lines)
    was_empty = card.yaml_text == "" or (
        span is not None and any(_bare(x) == EMPTY_FRONT_MATTER for x in lines[span[0] : span[1]])
    )
    if was_empty:
        block += EMPTY_FRONT_MATTER + card.nl
    if span is None:
        card.yaml_text += block
    else:
        card.yaml_text = "".join(lines[: span[0]]) + block + "".join(lines[span[1] :])


def _append_section(card: Card, bp: Blueprint, file_name: str, where: str) -> None:
    """Append the generated section after the body (a blank line between them)."""
    lines = _lines(card.body)
    _, open_fence = _fences(lines)
    if open_fence is not None:
        raise bad_container(
            where,
            "the card ends inside a fenced code block; close it before embedding (a section appended "
            "there would be code, not a section)",
            f"body line {open_fence + 1}",
        )
    if not card.body:
        # Straight after the front matter; a closing `---` at the very end of the file gets a line
        # break, and the section says so.
        missing = not card.closing.endswith("\n")
        card.closing += card.nl if missing else ""
        card.body = generated_section(bp, card.nl, file_name, body_had_no_final_newline=missing)
        return
    # A body without a final newline gets a line break too, and the section says so, so that strip
    # gives the body back byte for byte.
    missing = not card.body.endswith("\n")
    section = generated_section(bp, card.nl, file_name, body_had_no_final_newline=missing)
    card.body = card.body + card.nl * (2 if missing else 1) + section


def remove_from_text(text: str, where: str = "card") -> str | None:
    """`text` without the blueprint entry and section, or None when it holds neither."""
    card = split_card(text, where)
    old = parse_front_matter(card, where)
    changed = _remove_entry(card)
    span = _section_span(card.body, where)
    if span is not None:
        before, section, after = card.body[: span[0]], card.body[span[0] : span[1]], card.body[span[1] :]
        if not after:  # appended by embed: drop exactly the line breaks it added before the section
            flagged = any(_bare(line) == NO_FINAL_NEWLINE for line in _lines(section))
            if before:
                for _ in range(2 if flagged else 1):
                    before = before.removesuffix(card.nl)
            elif flagged:
                card.closing = card.closing.removesuffix(card.nl)
        card.body = before + after
        changed = True
    if not changed:
        return None
    new_text = card.render()
    _check_other_keys(old, new_text, where, expect=None)
    return new_text


def _remove_entry(card: Card) -> bool:
    """Take our entry out of the front matter (dropping a front matter that held only it, unless it
    existed, empty, before); False when there was none."""
    if not card.has_front_matter:
        return False
    lines = _lines(card.yaml_text)
    span = _block_span(lines)
    if span is None:
        return False
    kept_empty = any(_bare(x) == EMPTY_FRONT_MATTER for x in lines[span[0] : span[1]])
    card.yaml_text = "".join(lines[: span[0]]) + "".join(lines[span[1] :])
    if card.yaml_text == "" and not kept_empty:
        card.has_front_matter = False  # it held only our entry: embed created it
    return True


def _check_other_keys(old: dict[str, Any], new_text: str, where: str, expect: dict[str, Any] | None) -> None:
    """Refuse an edit that would change any front matter key other than ours (or its order)."""
    new = parse_front_matter(split_card(new_text, where), where)
    others_old = {k: v for k, v in old.items() if k != FRONT_MATTER_KEY}
    others_new = {k: v for k, v in new.items() if k != FRONT_MATTER_KEY}
    if (
        list(others_old) != list(others_new)
        or others_old != others_new
        or new.get(FRONT_MATTER_KEY) != expect
    ):
        raise bad_container(
            where,
            "the front matter cannot be edited without changing other keys; "
            f"edit the `{FRONT_MATTER_KEY}` entry by hand or remove it",
        )


class ModelCardConverter(Converter):
    """Blueprint summary in a model card, full document in blueprint.json beside it."""

    kind = "model-card"

    def __init__(self, *, trusted_links: bool = False) -> None:
        """`trusted_links`: follow a `file` that is a symlink out of the card's folder (see `confined`)."""
        self.trusted_links = trusted_links

    def _sidecar(self, card_path: Path, entry: dict[str, Any]) -> Path:
        """The file the entry's `file` names: a safe relative name that resolves inside the folder."""
        sidecar = card_path.parent / _safe_file_name(entry.get("file", BLUEPRINT_FILE), card_path)
        return confined(sidecar, card_path.parent, self.trusted_links)

    def read(self, path: Path) -> Blueprint | None:
        text = read_card_text(path)
        card = split_card(text, str(path))
        front = parse_front_matter(card, str(path))
        entry = front.get(FRONT_MATTER_KEY)
        span = _section_span(card.body, str(path))  # unbalanced markers are bad-container
        if entry is None:
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
            raise bad_container(path, f"front matter `{FRONT_MATTER_KEY}` must be a mapping with a digest")
        expected: str = entry["digest"]
        sidecar = self._sidecar(path, entry)
        if os.path.lexists(sidecar):
            try:
                bp = load(sidecar)
            except BlueprintError as exc:
                sidecar_problem = f"; {sidecar.name} is not a valid blueprint ({exc.issues[0]})"
            else:
                if digest(bp) == expected:
                    return bp
                sidecar_problem = f"; {sidecar.name} has digest {digest(bp)}"
        else:
            sidecar_problem = f"; {sidecar.name} is missing"
        if span is not None:
            embedded = _embedded_json(card.body[span[0] : span[1]])
            if embedded is not None:
                bp = parse_embedded(embedded, f"{path} (embedded json block)")
                if digest(bp) == expected:
                    return bp
                raise bad_container(
                    path,
                    f"the embedded blueprint's digest {digest(bp)} differs from the front matter's {expected}",
                )
        raise ContainerError(
            make_error(
                "no-blueprint",
                f"{path}: the card names blueprint {expected} but holds no copy of it{sidecar_problem}",
            )
        )

    def write(self, path: Path, bp: Blueprint, out: Path | None = None, **opts: Any) -> WriteResult:
        """Write blueprint.json beside the (output) card, then the card. A missing card is created."""
        target = out if out is not None else path
        text = read_card_text(path) if os.path.lexists(path) else ""
        card = split_card(text, str(path))
        previous = parse_front_matter(card, str(path)).get(FRONT_MATTER_KEY)
        replaced = previous.get("digest") if isinstance(previous, dict) else None
        new_text = embed_in_text(text, bp, str(path))
        sidecar = target.parent / BLUEPRINT_FILE
        files = []
        if opts.get("sidecar", True):
            atomic_write_bytes(sidecar, canonical_text(bp).encode("utf-8"))
            files.append(sidecar)
        atomic_write_bytes(target, new_text.encode("utf-8"))
        files.append(target)
        return WriteResult(path=target, files=files, replaced=replaced if isinstance(replaced, str) else None)

    def remove(self, path: Path, out: Path | None = None, **opts: Any) -> WriteResult:
        """Remove entry and section; delete blueprint.json beside the card when it is the card's blueprint."""
        text = read_card_text(path)
        card = split_card(text, str(path))
        entry = parse_front_matter(card, str(path)).get(FRONT_MATTER_KEY)
        new_text = remove_from_text(text, str(path))
        target = out if out is not None else path
        files: list[Path] = []
        if new_text is None:
            if out is not None and not same_file(out, path):
                atomic_write_bytes(target, text.encode("utf-8"))
                files.append(target)
            return WriteResult(path=target, changed=False, files=files)
        sidecar = self._sidecar(path, entry) if isinstance(entry, dict) else None
        atomic_write_bytes(target, new_text.encode("utf-8"))
        files.append(target)
        if sidecar is not None and (out is None or same_file(out, path)):
            try:
                if sidecar.is_file() and digest(load(sidecar)) == entry.get("digest"):  # type: ignore[union-attr]
                    os.unlink(sidecar)
                    files.append(sidecar)
            except BlueprintError:
                pass
            except OSError as exc:
                raise io_error(sidecar, exc, "write-failed") from None
        replaced = entry.get("digest") if isinstance(entry, dict) else None
        return WriteResult(path=target, files=files, replaced=replaced if isinstance(replaced, str) else None)
