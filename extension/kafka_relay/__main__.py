"""Entry point: ``python -m kafka_relay --name kafka-relay`` (run by the layer's launcher).

Registers with the Extensions API first, with nothing heavier than the stdlib
loaded; only then imports the producer and the rest.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from kafka_relay.config import EXTENSION_NAME, lambda_mode, load_config
from kafka_relay.errors import LambdaApiError, RelayError
from kafka_relay.lifecycle.api import ExtensionsApi
from kafka_relay.lifecycle.modes import register
from kafka_relay.observability.log import JsonLogger


def main(argv: list[str], env: Mapping[str, str], stream: TextIO) -> int:
    parser = argparse.ArgumentParser(prog="kafka-relay")
    parser.add_argument("--name", default=EXTENSION_NAME,
                        help="extension name (the launcher's file name)")
    args = parser.parse_args(argv)

    logger = JsonLogger(stream=stream)
    try:
        api = ExtensionsApi(env.get("AWS_LAMBDA_RUNTIME_API", ""), name=args.name)
        register(api, lambda_mode(env), logger)  # SHUTDOWN only on managed instances
    except LambdaApiError as exc:
        logger.error("init.register_failed", error=str(exc))
        return 1

    try:
        config = load_config(env)
        logger = JsonLogger(level=config.log_level, stream=stream)
        from kafka_relay.producer.runtime_check import require_confluent_kafka  # noqa: PLC0415
        require_confluent_kafka(env)  # a layer for another runtime: ConfigError, no traceback
        from kafka_relay.app import assemble  # noqa: PLC0415 - heavy imports after register

        parts = assemble(config, logger, api=api)
    except RelayError as exc:
        logger.error("init.error", error_type=exc.lambda_error_type, error=str(exc))
        api.init_error(exc.lambda_error_type, str(exc))
        return 1

    try:
        return (parts.background_loop(api) or parts.event_loop(api)).run()
    except Exception as exc:  # last resort: run() reports its own failures
        logger.error("runtime.error", error=repr(exc))
        api.exit_error("Extension.RuntimeError", f"kafka-relay stopped unexpectedly: {exc!r}")
        return 1


if __name__ == "__main__":
    code = main(sys.argv[1:], os.environ, sys.stdout)
    sys.stdout.flush()
    # Skip interpreter teardown: destroying librdkafka can block past SIGKILL's deadline,
    # and every record is already accounted for.
    os._exit(code)
