"""Entry point: ``python -m kafka_relay --name kafka-relay`` (run by the layer's launcher).

Lambda measures init from process start, so the extension registers first, over a bare
socket, with nothing but ``os``, ``sys``, ``time``, ``_socket`` and ``aws_lambda`` (Lambda's
names, itself importing nothing) loaded; configuration, secrets, the producer and the rest
are imported and read only afterwards.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # typing itself costs milliseconds before registering
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import TextIO

    from kafka_relay.prepare import Prepared

_STARTED = time.perf_counter()
# After an error reported past /next, how long the process (and its bound handoff port)
# outlives the report: Lambda resets the environment meanwhile.
EXIT_HOLD_S = 2.0
_DEFAULT_NAME = "kafka-relay"  # config.EXTENSION_NAME, not imported before registering


_USAGE = """usage: python -m kafka_relay [--name NAME] [--version] [--help]

The kafka-relay Lambda extension: the layer's extensions/kafka-relay runs it inside a Lambda
execution environment (it registers with AWS_LAMBDA_RUNTIME_API). Configured by environment
variables (KAFKA_BOOTSTRAP_SERVERS, KAFKA_AUTH, ...); see the configuration reference.
"""


def main(argv: list[str], env: Mapping[str, str], stream: TextIO) -> int:
    if "--version" in argv or "-h" in argv or "--help" in argv:
        from kafka_relay import __version__  # noqa: PLC0415

        try:
            sys.stdout.write(f"kafka-relay {__version__}\n" if "--version" in argv else _USAGE)
            sys.stdout.flush()
        except BrokenPipeError:  # --help | head: nothing left to say
            pass
        return 0
    name = _name(argv)
    from kafka_relay.aws_lambda import RUNTIME_API, ready_before_assembly  # noqa: PLC0415
    from kafka_relay.lifecycle.register import (  # noqa: PLC0415
        RegisterFailed,
        register_for_mode,
    )

    runtime_api = env.get(RUNTIME_API, "")
    try:
        # SHUTDOWN only on Lambda Managed Instances (INVOKE is refused there).
        registration = register_for_mode(runtime_api, name, env)
    except RegisterFailed as exc:
        from kafka_relay.observability.log import JsonLogger  # noqa: PLC0415
        JsonLogger(stream=stream).error("init.register_failed", error=str(exc))
        return 1
    registered_ms = (time.perf_counter() - _STARTED) * 1000
    since_start_ms = _since_process_start_ms()

    # Everything heavier than registering comes after it.
    from kafka_relay.config import load_config  # noqa: PLC0415
    from kafka_relay.errors import RelayError  # noqa: PLC0415
    from kafka_relay.lifecycle.api import ExtensionsApi  # noqa: PLC0415
    from kafka_relay.observability.log import JsonLogger  # noqa: PLC0415

    api = ExtensionsApi(runtime_api, name=name)
    api.identifier = registration.identifier
    logger = JsonLogger(stream=stream)
    prepared: Prepared | None = None
    try:
        config = load_config(env)
        logger = JsonLogger(level=config.log_level, stream=stream)
        logger.info("init.registered", main_ms=round(registered_ms, 1),
                    since_process_start_ms=since_start_ms, events=registration.events)
        if registration.refused:
            logger.warning("init.register_shutdown_only", error=registration.refused,
                           hint="INVOKE was refused (Lambda Managed Instances?): running with "
                                "SHUTDOWN only, delivering in the background")
        from kafka_relay.producer.runtime_check import require_confluent_kafka  # noqa: PLC0415
        require_confluent_kafka()  # a layer for another runtime: ConfigError, no traceback
        if ready_before_assembly(env, registration.events):
            from kafka_relay.config import LambdaMode  # noqa: PLC0415
            from kafka_relay.prepare import prepare  # noqa: PLC0415
            prepared = prepare(config, logger, build_producer=True, mode=LambdaMode.ON_DEMAND,
                               api=api)
            api.request_next()  # Lambda counts the extension ready from here
            prepared.ready_cpu_ms = time.process_time() * 1000
        from kafka_relay.app import assemble  # noqa: PLC0415 - heavy imports after register

        parts = assemble(config, logger, registration.events, api=api, prepared=prepared)
    except RelayError as exc:
        after_ready = prepared is not None and prepared.ready_cpu_ms is not None
        logger.error("init.error", error_type=exc.lambda_error_type, error=str(exc),
                     **({"after_ready": True} if after_ready else {}))
        # After /next, init is over for Lambda: the same error ends the environment instead.
        report = api.exit_error if after_ready else api.init_error
        report(exc.lambda_error_type, str(exc))
        if after_ready:
            # The handoff port stays bound while Lambda resets the environment: a handler's
            # records wait in its backlog, so the invocation fails with this error, not
            # with a refused connection that would race it.
            time.sleep(EXIT_HOLD_S)
        return 1

    try:
        return parts.mode.loop(api).run()
    except Exception as exc:  # last resort: run() reports its own failures
        logger.error("runtime.error", error=repr(exc))
        api.exit_error("Extension.RuntimeError", f"kafka-relay stopped unexpectedly: {exc!r}")
        return 1


def _name(argv: list[str]) -> str:
    """``--name NAME`` or ``--name=NAME`` (the launcher's file name); argparse costs ~5 ms."""
    for index, arg in enumerate(argv):
        if arg == "--name" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--name="):
            return arg.partition("=")[2]
    return _DEFAULT_NAME


def _since_process_start_ms() -> int | None:
    """Milliseconds since the kernel started this process (10 ms ticks), where /proc says."""
    try:
        with open("/proc/self/stat", "rb") as stat, open("/proc/uptime", "rb") as uptime:
            start_ticks = int(stat.read().rpartition(b")")[2].split()[19])
            now_s = float(uptime.read().split()[0])
        return round((now_s - start_ticks / os.sysconf("SC_CLK_TCK")) * 1000)
    except (OSError, ValueError, IndexError):
        return None


if __name__ == "__main__":
    code = main(sys.argv[1:], os.environ, sys.stdout)
    from contextlib import suppress

    with suppress(BrokenPipeError):  # after --help | head, the buffer still holds what it left
        sys.stdout.flush()
    # Skip interpreter teardown: destroying librdkafka can block past SIGKILL's deadline,
    # and every record is already accounted for.
    os._exit(code)
