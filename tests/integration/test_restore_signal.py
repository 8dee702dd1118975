"""A restore from a snapshot that the environment did not announce (no SnapStart detected at
init, so the on-demand mode built its producer before the snapshot): Telemetry's
``platform.restoreStart``, through the assembled extension's own receiver, gives it a fresh
x-relay-id prefix and a new producer before the next batch; nothing is lost."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from devtools.kafka_broker import free_port
from kafka_relay.app import assemble
from kafka_relay.aws_lambda import registration_events
from kafka_relay.client import RelayClient
from kafka_relay.config import load_config
from kafka_relay.lifecycle.api import ExtensionsApi
from kafka_relay.lifecycle.events import ShutdownEvent
from kafka_relay.observability.log import JsonLogger
from kafka_relay.tools.table import events_named
from tests.conftest import Broker
from tests.relay_harness import TOKEN


@contextmanager
def _telemetry_api() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The Telemetry API's subscribe route, answering 200 and keeping each subscription."""
    subscriptions: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            subscriptions.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", subscriptions
    finally:
        server.shutdown()
        server.server_close()


def _post(uri: str, events: list[dict[str, Any]]) -> None:
    request = urllib.request.Request(uri, data=json.dumps(events).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200


def test_a_restore_signal_on_demand_reseeds_the_ids_and_rebuilds_the_producer(
        broker: Broker, tmp_path: Path) -> None:
    topic = broker.create_topic()
    env = {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "KAFKA_TOPIC": topic,
           "KAFKA_RELAY_TOKEN": TOKEN, "KAFKA_RELAY_PORT": str(free_port()),
           "KAFKA_RELAY_SPOOL_DIR": str(tmp_path / "spool"),
           "KAFKA_RELAY_JOURNAL_DIR": str(tmp_path / "journal"),
           "AWS_ACCESS_KEY_ID": "ASIAEXAMPLE"}  # static keys: not taken for SnapStart
    log = io.StringIO()
    with _telemetry_api() as (address, subscriptions):
        config = load_config(env)
        parts = assemble(config, JsonLogger(stream=log, level="DEBUG"),
                         registration_events(env), api=ExtensionsApi(address, name="kafka-relay"))
        client = RelayClient(env={}, port=config.port, token=TOKEN)
        try:
            before = client.send([{"key": "k", "value": "before"}]).ids
            client.flush()
            (subscription,) = subscriptions
            _post(subscription["destination"]["URI"], [
                {"time": "2025-01-29T00:00:00.000Z", "type": "platform.restoreStart",
                 "record": {"runtimeVersion": "python:3.13"}}])
            deadline = time.monotonic() + 10
            while not events_named(log.getvalue().splitlines(), "restore.reseeded") \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
            after = client.send([{"key": "k", "value": "after"}]).ids
            client.flush()
        finally:
            client.close()
            parts.mode.listener.shutdown(ShutdownEvent("spindown", int(time.time() * 1000) + 1_500))
    lines = log.getvalue().splitlines()

    (ready,) = events_named(lines, "init.ready")
    assert ready["mode"] == "on-demand"
    (reseeded,) = events_named(lines, "restore.reseeded")
    assert reseeded["trigger"] == "telemetry"
    # Through the ring (the client's default) ids are the ring's; after the restore the
    # client hands bodies over through a new ring of its own (a new tag), as every copy does.
    assert {i.split("-")[0] for i in before}.isdisjoint(i.split("-")[0] for i in after)
    assert len({i.split("-")[0] for i in before + after}) == 2
    (summary,) = events_named(lines, "shutdown.summary")
    assert (summary["delivered"], summary["unaccounted"], summary["producers_built"]) == (2, 0, 2)
    got = broker.read(topic, expected=2)
    assert sorted(r.headers["x-relay-id"].decode() for r in got) == sorted(before + after)
