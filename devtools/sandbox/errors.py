"""What can go wrong in the sandbox, each with a message that says what to do."""

from __future__ import annotations


class SandboxError(RuntimeError):
    """The sandbox could not be set up or used as asked."""


class SandboxInitError(SandboxError):
    """The init phase failed, as Lambda would report it.

    ``error_type`` is Lambda's (``Extension.ConfigError`` from an extension's
    ``init/error``, ``Runtime.ImportModuleError`` from the runtime,
    ``Extension.Crash``, ``Extension.LaunchError``, ``Runtime.ExitError``,
    ``Sandbox.Timedout``); ``source`` names the process that failed; the log
    stream holds its output.
    """

    def __init__(self, error_type: str, message: str, *, source: str) -> None:
        super().__init__(f"init failed ({error_type}) in {source}: {message}")
        self.error_type = error_type
        self.message = message
        self.source = source
