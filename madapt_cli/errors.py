"""Errors a user can act on.

Every failure caused by the user's input or environment is raised as a :class:`MadaptError`.
The CLI prints its message on one line of stderr and exits with its ``exit_code``; it never
shows a traceback for these. An ``OSError`` that the machine caused (disk full, read-only
file system, permission denied) becomes one line and :data:`EXIT_ENVIRONMENT` at the CLI.
"""

from __future__ import annotations

import errno

# Stable exit codes, documented in README.md.
EXIT_BAD_INPUT = 2  # bad data, options or files
EXIT_PROVIDER = 3  # an embedding provider failed after all retries
EXIT_ENVIRONMENT = 4  # the machine refused: disk full, read-only, permission denied
EXIT_REQUIREMENT = 5  # `madapt eval --require`: a quality requirement was not met
EXIT_INTERRUPTED = 130  # Ctrl-C; a rerun resumes

#: errno values that describe the machine, not the input or a bug
ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EMFILE,
        errno.ENFILE,
        errno.EIO,
    }
)


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


class EnvironmentFailure(MadaptError):
    """The machine refused an operation (disk full, read-only, permission denied)."""

    exit_code = EXIT_ENVIRONMENT


class RequirementFailed(MadaptError):
    """A ``--require`` quality gate that the measured figures do not meet (after the results
    were printed)."""

    exit_code = EXIT_REQUIREMENT


def environment_failure(error: OSError) -> EnvironmentFailure | None:
    """The one-line error for an ``OSError`` the machine caused, or None for anything else."""
    if error.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = f": {error.filename}" if error.filename else ""
    reason = error.strerror or str(error)
    return EnvironmentFailure(f"{reason}{where}")
