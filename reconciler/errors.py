"""careconcile's one error hierarchy, and the one place that maps errors to exit codes.

Library errors are wrapped (``raise SandboxError(...) from exc``) so that the cause stays
attached while the CLI prints a message that names the object at fault.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2  # reserved for `plan --detailed-exitcode` and `drift`
EXIT_USAGE = 64


class CareconcileError(Exception):
    """Base of every error careconcile raises on purpose."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(CareconcileError):
    """The command line asks for something that cannot be done as asked."""

    exit_code = EXIT_USAGE


class SpecError(CareconcileError):
    """A spec file is unreadable or invalid."""


class PKIError(CareconcileError):
    """A certificate or key is malformed or does not fit its purpose."""


class BinariesMissingError(CareconcileError):
    """The Kubernetes binaries are not built; `hack/build-binaries.sh` builds them."""


class SandboxError(CareconcileError):
    """A sandbox cluster could not be started, inspected or stopped."""


class SandboxNotFoundError(SandboxError):
    """No sandbox with that name exists."""


class ClusterUnreachableError(CareconcileError):
    """A cluster's API could not be reached or did not answer as expected."""


def exit_code_for(error: BaseException) -> int:
    """The process exit code for an error that reached the CLI."""
    if isinstance(error, CareconcileError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return 130
    return EXIT_ERROR
