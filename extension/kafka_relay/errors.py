"""The extension's exceptions. Every message says what was wrong and what to do.

``lambda_error_type`` is what the Extensions API receives in
``Lambda-Extension-Function-Error-Type`` on init/exit errors.
"""

from __future__ import annotations

from kafka_relay.protocol import RelayError

__all__ = ["AuthError", "ConfigError", "LambdaApiError", "PortInUseError",
           "RelayError"]

class ConfigError(RelayError):
    """A setting is missing or malformed; the message names the variable and the fix."""

    lambda_error_type = "Extension.ConfigError"


class AuthError(RelayError):
    """Kafka or AWS refused the configured credentials."""

    lambda_error_type = "Extension.AuthError"


class PortInUseError(RelayError):
    """The handoff port is taken by another process."""

    lambda_error_type = "Extension.PortInUse"


class LambdaApiError(RelayError):
    """The Extensions or Telemetry API answered unexpectedly."""

    lambda_error_type = "Extension.LambdaApiError"
