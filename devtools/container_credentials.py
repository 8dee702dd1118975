"""A container credentials endpoint on loopback, as Lambda serves the execution role's
credentials under SnapStart (``AWS_CONTAINER_CREDENTIALS_FULL_URI`` +
``AWS_CONTAINER_AUTHORIZATION_TOKEN``), with short-lived credentials for tests.

Every GET issues NEW temporary credentials (a new access key id) valid for
``lifetime_s`` and records them in ``keys`` -- hand the same mapping to
``MskIamVerifier`` and the verifier knows each key's secret and expiry::

    keys: dict[str, KnownKey] = {}
    with ContainerCredentials(keys, lifetime_s=4) as creds:
        env = creds.environment()   # the two variables botocore's chain reads
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import MutableMapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from devtools.msk_iam_verifier import KnownKey


class ContainerCredentials:
    def __init__(self, keys: MutableMapping[str, KnownKey], *, lifetime_s: float,
                 host: str = "127.0.0.1") -> None:
        self.keys = keys
        self.lifetime_s = lifetime_s
        self.token = secrets.token_urlsafe(24)
        self.issued: dict[str, float] = {}  # access key id -> when it was issued (epoch s)
        self.refused = 0  # requests without the authorization token
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="container-credentials", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/role-credentials"

    def environment(self) -> dict[str, str]:
        return {"AWS_CONTAINER_CREDENTIALS_FULL_URI": self.url,
                "AWS_CONTAINER_AUTHORIZATION_TOKEN": self.token}

    def issue(self) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            key_id = f"ASIATEST{len(self.issued):08d}"
            secret, session = secrets.token_urlsafe(30), secrets.token_urlsafe(60)
            self.keys[key_id] = KnownKey(secret, session, expires_at=now + self.lifetime_s)
            self.issued[key_id] = now
        expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + self.lifetime_s))
        return {"AccessKeyId": key_id, "SecretAccessKey": secret, "Token": session,
                "Expiration": expiration}

    def start(self) -> ContainerCredentials:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ContainerCredentials:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _handler(endpoint: ContainerCredentials) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") != endpoint.token:
                endpoint.refused += 1
                self._answer(401, {"message": "missing or wrong authorization token"})
                return
            self._answer(200, endpoint.issue())

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
