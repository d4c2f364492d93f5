"""JSON pointers (RFC 6901): building them from keys, and reading or writing the value one names."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any


def escape(token: str | int) -> str:
    """One reference token, escaped (`~` as `~0`, `/` as `~1`)."""
    return str(token).replace("~", "~0").replace("/", "~1")


def join(keys: Iterable[str | int]) -> str:
    """The pointer of a path of member names and array indexes ("" for the whole document)."""
    return "".join("/" + escape(k) for k in keys)


def tokens(pointer: str) -> list[str]:
    """The unescaped reference tokens of `pointer`."""
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]


def step(node: Any, token: str) -> Any:
    """The child of `node` that `token` names (KeyError, IndexError or ValueError if none)."""
    return node[int(token)] if isinstance(node, list) else node[token]


def get(doc: Any, pointer: str) -> Any:
    """The value at `pointer` in `doc`."""
    node = doc
    for token in tokens(pointer):
        node = step(node, token)
    return node


def put(doc: Any, pointer: str, value: Any) -> bool:
    """Set the object member that `pointer` names; False (nothing changed) when its parent is not an
    object in `doc` any more."""
    parts = tokens(pointer)
    node = doc
    try:
        for token in parts[:-1]:
            node = step(node, token)
    except (KeyError, IndexError, ValueError, TypeError):
        return False
    if not isinstance(node, dict) or not parts:
        return False
    node[parts[-1]] = value
    return True


class CopyOnWrite:
    """Edits of a parsed document that leave the original untouched, copying only the containers
    on the paths edited (each at most once), so that removing members from a large document does
    not copy all of it."""

    def __init__(self, doc: Any) -> None:
        self.root = _shallow(doc)
        self._copied = {id(self.root)}

    def parent(self, pointer: str) -> tuple[Any, str]:
        """The (copied) container holding what `pointer` names, and the last token."""
        parts = tokens(pointer)
        node = self.root
        for token in parts[:-1]:
            key: str | int = int(token) if isinstance(node, list) else token
            child = node[key]
            if id(child) not in self._copied:
                child = _shallow(child)
                node[key] = child
                self._copied.add(id(child))
            node = child
        return node, parts[-1]

    def remove(self, pointer: str) -> None:
        """Delete the object member `pointer` names."""
        node, last = self.parent(pointer)
        if isinstance(node, dict):
            node.pop(last, None)

    def truncate(self, pointer: str, entries: int) -> None:
        """Keep only the first `entries` entries of the array or object `pointer` names."""
        node, last = (None, "") if pointer == "" else self.parent(pointer)
        target = self.root if node is None else step(node, last)
        clipped = _clip(target, entries)
        if node is None:
            self.root = clipped
        elif isinstance(node, list):
            node[int(last)] = clipped
        else:
            node[last] = clipped


def _shallow(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value


def _clip(value: Any, entries: int) -> Any:
    if isinstance(value, list):
        return value[:entries]
    if isinstance(value, dict):
        return dict(itertools.islice(value.items(), entries))
    return value
