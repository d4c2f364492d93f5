"""Errors raised by the reference implementation for bad input or refused computations.

Every error carries a code from `blueprint_format.errors.ERROR_CODES`. Where the table has no
dedicated code yet, `_code` falls back to the closest existing one, so that the CLI prints a
registered code either way.
"""

from __future__ import annotations

from blueprint_format.errors import ERROR_CODES, BlueprintError, BlueprintIOError, Issue, make_error


def _code(preferred: str, fallback: str) -> str:
    return preferred if preferred in ERROR_CODES else fallback


class ComputeError(BlueprintError):
    """The computation was refused or failed (non-finite gradients, out of memory, ...). Exit 1."""

    exit_status = 1


class ComputeInputError(BlueprintIOError):
    """The model folder or the calibration data cannot be used (missing, empty, not UTF-8...). Exit 2."""

    exit_status = 2


def input_error(code: str, message: str, path: str = "", fallback: str = "io-error") -> ComputeInputError:
    """A ComputeInputError with one issue."""
    return ComputeInputError(make_error(_code(code, fallback), message, path))


def compute_error(code: str, message: str, path: str = "", fallback: str = "inconsistent-statistics") -> ComputeError:
    """A ComputeError with one issue."""
    return ComputeError(make_error(_code(code, fallback), message, path))


def issue(code: str, message: str, path: str = "", fallback: str = "io-error") -> Issue:
    """An error Issue whose code falls back to a registered one."""
    return make_error(_code(code, fallback), message, path)
