"""careconcile's one error hierarchy, and the one place that maps errors to exit codes.

Library errors are wrapped (``raise SandboxError(...) from exc``) so that the cause stays
attached while the CLI prints a message that names the object at fault.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2  # reserved for `plan --detailed-exitcode` and `drift`
EXIT_USAGE = 64
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), as shells report it
EXIT_TERMINATED = 143  # SIGTERM, what CI runners and Kubernetes send to stop a job


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
    """A spec file is unreadable or invalid. ``problems`` holds one line per error,
    each ``FILE:LINE:COLUMN: path.to.field: message``, so that all are reported at once."""

    def __init__(self, message: str, *, problems: list[str] | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = list(problems or [])

    def __str__(self) -> str:
        if not self.problems:
            return super().__str__()
        return "\n".join([self.message, *self.problems])


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


class UntrustedServerError(ClusterUnreachableError):
    """A server answered, but its serving certificate does not verify against the CA it must
    chain to (an aggregated apiserver and its APIService's caBundle, say)."""


class CredentialPluginError(CareconcileError):
    """A kubeconfig's exec credential plugin could not be run or gave no usable credential;
    the message names the command, the hint is the kubeconfig's installHint."""


class NodeUnreachableError(CareconcileError):
    """A node's files could not be reached (missing root directory, SSH failure)."""


class NodePathError(CareconcileError):
    """A path careconcile was to read or write on a node would leave the node's root: a
    ``..`` component, or a symbolic link to a directory outside the root on the way."""


# --- the Kubernetes API, as a small typed family (after kopf's clients/errors.py) ---

class APIError(CareconcileError):
    """The API server answered a request with an error status."""

    def __init__(self, message: str, *, status: int, reason: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.reason = reason


class APIUnauthorizedError(APIError):
    """401: the credentials were not accepted."""


class APIForbiddenError(APIError):
    """403: authenticated, but not allowed."""


class APINotFoundError(APIError):
    """404: no such object."""


class APIConflictError(APIError):
    """409: the object exists already, or changed since it was read."""


# --- planning and applying -------------------------------------------------------------

class LockHeldError(CareconcileError):
    """Another careconcile run holds the cluster's lock."""


class LockError(CareconcileError):
    """The lock could not be taken, renewed or removed as asked."""


class PlanFileError(CareconcileError):
    """A saved plan file is unreadable, malformed or from an incompatible version."""


class StalePlanError(CareconcileError):
    """The live state no longer matches the state a saved plan was made against."""


class PlanConflictError(CareconcileError):
    """The spec asks for something the live state cannot be brought to (for example a
    pinned fingerprint that no CA on the cluster has)."""


class OutputFileError(CareconcileError):
    """A file careconcile was asked to write (a saved plan, a metrics file) could not be written."""


class RotationError(CareconcileError):
    """An action failed, or a phase's result did not show on the live cluster in time."""


class RollbackRefusedError(CareconcileError):
    """There is nothing to roll back, or the old CA is no longer trusted everywhere."""

    def __init__(self, message: str, *, hint: str | None = None, nothing_in_progress: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.nothing_in_progress = nothing_in_progress  # no rotation of this authority to undo


class AdminClusterError(CareconcileError):
    """The management (admin) cluster does not hold what admin mode needs for a cluster (its
    CA Secret, its kubeconfig Secret, its node inventory), or a registration cannot be done
    as asked."""


def exit_code_for(error: BaseException) -> int:
    """The process exit code for an error that reached the CLI."""
    if isinstance(error, CareconcileError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):  # 128 + the signal: 130 for SIGINT, 143 for SIGTERM
        return getattr(error, "exit_code", EXIT_INTERRUPTED)
    return EXIT_ERROR
