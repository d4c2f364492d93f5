"""Errors raised by the reference implementation for bad input or refused computations.

Every error carries a code registered in `blueprint_format.errors.ERROR_CODES` (an unregistered
code is a bug and raises at once). The exit status follows the project's convention: 2 when a
file cannot be read or written or a flag is wrong (codes of the `io` and `usage` layers, and
`write-failed`), 1 when the content of a file (data, model, blueprint) is refused or the
computation fails on it.
"""

from __future__ import annotations

from blueprint_format.errors import ERROR_CODES, BlueprintError, Issue, make_error

#: Codes that blame the file system or the command line rather than a file's content.
_EXIT_2_LAYERS = frozenset({"io", "usage"})
_EXIT_2_CODES = frozenset({"write-failed"})


def exit_status_of(code: str) -> int:
    """2 for a file that cannot be read or written or a flag mistake, 1 for refused content."""
    if code in _EXIT_2_CODES or ERROR_CODES[code].layer in _EXIT_2_LAYERS:
        return 2
    return 1


class ComputeError(BlueprintError):
    """The computation was refused or failed (non-finite gradients, out of memory, ...). Exit 1."""

    exit_status = 1


class ComputeInputError(BlueprintError):
    """The model folder or the data cannot be used: exit 1 for refused content (not UTF-8,
    empty, too few examples, custom code), exit 2 when the file cannot be read at all."""

    def __init__(self, issues: list[Issue] | Issue) -> None:
        super().__init__(issues)
        self.exit_status = exit_status_of(self.code)


def input_error(code: str, message: str, path: str = "") -> ComputeInputError:
    """A ComputeInputError with one issue."""
    return ComputeInputError(make_error(code, message, path))


def compute_error(code: str, message: str, path: str = "") -> ComputeError:
    """A ComputeError with one issue."""
    return ComputeError(make_error(code, message, path))
