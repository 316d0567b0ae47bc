"""The one exception tree of gpubox.

Every error gpubox means to show a user is a :class:`GpuboxError`. The command line turns it into one line on
stderr (``gpubox: <message>``) and the exit code of the design; anything else that escapes is a bug and is
reported as such (the traceback only with ``--debug``).

::

    GpuboxError                     exit 1   the operation failed
    ├── BadInput                    exit 2   the user asked for something impossible
    │   ├── UsageError                       command-line arguments
    │   └── ConfigError                      hosts.toml / gpubox.toml, with file, line and key
    ├── StateError                  exit 1   the local state database
    ├── RemoteError                 exit 1   the host answered, but the operation failed there
    │   ├── AgentError                       the remote agent could not start or broke its protocol
    │   └── ProviderError                    a cloud provider's API refused (no capacity, quota, failed terminate)
    └── HostError                   exit 3   cannot reach or trust the host
        ├── HostUnreachable                  DNS, refused, timed out, sshd missing for `local`
        │   └── ProviderUnreachable          a cloud provider's API did not answer in time
        ├── AuthenticationFailed             no key was accepted
        │   └── ProviderAuthFailed           the provider refused the API key (names its env variable)
        ├── HostKeyUnknown                   not pinned and not accepted
        └── HostKeyChanged                   differs from the pinned key: always refused

``KeyboardInterrupt`` is not part of the tree: the command line maps it to exit 130.
"""

from __future__ import annotations

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_HOST",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "AgentError",
    "AuthenticationFailed",
    "BadInput",
    "ConfigError",
    "GpuboxError",
    "HostError",
    "HostKeyChanged",
    "HostKeyUnknown",
    "HostUnreachable",
    "ProviderAuthFailed",
    "ProviderError",
    "ProviderUnreachable",
    "RemoteError",
    "StateError",
    "UsageError",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_HOST = 3
EXIT_INTERRUPTED = 130


class GpuboxError(Exception):
    """Base of every error gpubox reports to a user; ``str()`` is the one-line message.

    ``details`` are lines that show why (the end of pip's output for a failed env build): printed before the
    message, which stays the last line.
    """

    exit_code = EXIT_FAILED
    details: tuple[str, ...] = ()


class BadInput(GpuboxError):
    exit_code = EXIT_BAD_INPUT


class UsageError(BadInput):
    """Command-line arguments that make no sense."""


class ConfigError(BadInput):
    """A configuration file that is malformed or holds a wrong value.

    The message reads ``hosts.toml:7: hosts.a100.port: expected an integer 1-65535, got "22a"``.
    """

    def __init__(self, file: str, line: int | None, key: str | None, problem: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.problem = problem
        where = file if line is None else f"{file}:{line}"
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


class StateError(GpuboxError):
    """The local state database cannot be used (newer schema, corrupt file, unwritable folder)."""


class RemoteError(GpuboxError):
    """The host was reached but the operation failed there."""


class AgentError(RemoteError):
    """The remote agent could not be started, or it answered outside its protocol."""


class ProviderError(RemoteError):
    """A cloud provider's API answered with a refusal: no capacity, quota, an unknown instance type, a failed
    terminate. ``provider`` names it; ``code`` is the provider's own error code where it gave one."""

    def __init__(
        self, message: str, *, provider: str, code: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.code = code
        self.status = status


class HostError(GpuboxError):
    exit_code = EXIT_HOST


class HostUnreachable(HostError):
    pass


class ProviderUnreachable(HostUnreachable):
    """A cloud provider's API could not be reached, or kept failing (5xx, 429) past its retries."""


class AuthenticationFailed(HostError):
    pass


class ProviderAuthFailed(AuthenticationFailed):
    """The provider refused the API key; the message names the environment variable it came from."""


class HostKeyUnknown(HostError):
    def __init__(self, message: str, *, host: str, key_type: str, fingerprint: str) -> None:
        super().__init__(message)
        self.host = host
        self.key_type = key_type
        self.fingerprint = fingerprint


class HostKeyChanged(HostError):
    def __init__(self, message: str, *, host: str, expected: str, received: str) -> None:
        super().__init__(message)
        self.host = host
        self.expected = expected
        self.received = received
