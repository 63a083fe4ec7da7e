"""Errors a user can act on.

Every failure caused by the user's input or environment is raised as a :class:`MadaptError`.
The CLI prints its message on one line of stderr and exits with its ``exit_code``; it never
shows a traceback for these.
"""

from __future__ import annotations

# Stable exit codes, documented in README.md.
EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected internal error (a bug): traceback shown
EXIT_BAD_INPUT = 2  # bad data, options or files
EXIT_PROVIDER = 3  # an embedding provider failed after all retries
EXIT_INTERRUPTED = 130  # Ctrl-C; a rerun resumes


class MadaptError(Exception):
    """A one-line, user-facing error."""

    exit_code: int = EXIT_BAD_INPUT

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InputError(MadaptError):
    """Malformed or inconsistent input data (names the file and line or id)."""


class StoreError(MadaptError):
    """An embedding store that is missing, inconsistent or asked for the impossible."""


class ProviderError(MadaptError):
    """An embedding provider that failed for good (after retries) or is misconfigured."""

    exit_code = EXIT_PROVIDER
