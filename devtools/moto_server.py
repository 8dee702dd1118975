"""A local AWS (moto in server mode) on loopback, for any test that talks to AWS with boto3.

The code under test keeps using plain boto3; it reaches the server through the
standard ``AWS_ENDPOINT_URL`` variable, with dummy credentials and a region::

    @pytest.fixture(scope="session")
    def moto() -> Iterator[MotoServer]:
        with MotoServer() as server:
            yield server

    def test_spill(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
        use_moto(moto, monkeypatch)  # empty server, AWS_ENDPOINT_URL etc. set
        boto3.client("s3").create_bucket(Bucket="spill")

A subprocess gets the same settings with ``env={**os.environ, **server.env()}``.

Server mode (not ``mock_aws``) means a real HTTP endpoint: subprocesses such
as the extension in the local Lambda sandbox can use it too. One server can
serve a whole session; ``reset()`` empties it between tests.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import urllib.request
from typing import TYPE_CHECKING, Any

import boto3
from moto.server import ThreadedMotoServer

from devtools.service import Service

if TYPE_CHECKING:  # only use_moto's signature: the demo runs without the dev set
    import pytest

#: moto's fixed account for every request.
ACCOUNT_ID = "123456789012"
DEFAULT_REGION = "us-east-1"


class MotoServer(Service):
    """moto's threaded server on a free 127.0.0.1 port."""

    def __init__(self, *, region: str = DEFAULT_REGION) -> None:
        self.region = region
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._port: int | None = None
        self._sessions: dict[str, Any] = {}  # by region, shared with in_region's views
        self._sessions_lock = threading.Lock()

    def start(self) -> MotoServer:
        if self._port is None:
            # One werkzeug access-log line per AWS call drowns the test output.
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
            self._server.start()
            self._port = self._server.get_host_and_port()[1]
        return self

    def stop(self) -> None:
        if self._port is not None:
            self._server.stop()
            self._port = None


    @property
    def endpoint_url(self) -> str:
        if self._port is None:
            raise RuntimeError("the moto server is not running: use it as a context manager")
        return f"http://127.0.0.1:{self._port}"

    def env(self) -> dict[str, str]:
        """What a process needs to use this server through the standard boto3 settings.

        The config and credentials files are blanked so a developer's own AWS
        setup (profiles, SSO) cannot leak in; drop ``AWS_PROFILE`` too.
        """
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def session(self) -> Any:
        """A boto3 session bound to this server whatever the process environment says.

        One per server and region: a new session loads every service model again (a tenth
        of a second per client), and tests ask for clients hundreds of times.
        """
        with self._sessions_lock:
            if self.region not in self._sessions:
                self._sessions[self.region] = boto3.Session(
                    aws_access_key_id="testing",
                    aws_secret_access_key="testing",
                    aws_session_token="testing",
                    region_name=self.region,
                )
            return self._sessions[self.region]

    def in_region(self, region: str) -> MotoServer:
        """This running server, its clients and environment in ``region`` (moto serves every
        region at once, so one server can stand in for a deployment anywhere)."""
        view = copy.copy(self)
        view.region = region
        return view

    def client(self, service: str) -> Any:
        session = self.session()
        with self._sessions_lock:  # a boto3 session is not thread-safe
            return session.client(service, endpoint_url=self.endpoint_url)

    def reset(self) -> None:
        """Forget every resource (moto's reset API), so tests do not see each other's."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()


def use_moto(server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """For a test: an empty server, and this process's boto3 pointed at it until the test ends."""
    server.reset()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return server
