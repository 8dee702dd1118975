"""The Lambda APIs on loopback: Runtime API, Extensions API and Telemetry API, one server.

Real paths, real headers, real status codes (as far as the public docs and
``awslambdaric`` tell). ``/next`` calls block in their handler thread until
the control thread hands out an event; every state change happens under the
environment's condition and wakes the control thread.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devtools.sandbox.state import EnvState, ErrorReport, ExtensionState, Invocation
from devtools.sandbox.telemetry import TelemetryRequestError, iso_time

_RUNTIME = "/2018-06-01/runtime"
_EXTENSION = "/2020-01-01/extension"
_TELEMETRY = "/2022-07-01/telemetry"
_EVENTS = frozenset({"INVOKE", "SHUTDOWN"})
_ACCOUNT_ID = "123456789012"
MANAGED_INSTANCES_SCHEMA = "2025-01-29"
#: Where SnapStart environments fetch the execution role's credentials (this sandbox's
#: choice of path: the variables matter, Lambda's own path was not confirmed).
CREDENTIALS_PATH = "/2021-04-23/credentials"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, status: int, value: Any, **headers: str) -> Response:
        return cls(status, json.dumps(value).encode(),
                   {"Content-Type": "application/json", **headers})

    @classmethod
    def error(cls, status: int, error_type: str, message: str) -> Response:
        return cls.of_json(status, {"errorMessage": message, "errorType": error_type})


ACCEPTED = Response.of_json(202, {"status": "OK"})
_Route = Callable[[EnvState, Request], Response]


class LambdaApiServer:
    """Serves the current environment (``env``); a new one replaces it after a reset."""

    def __init__(self, *, log: Callable[[str], None]) -> None:
        self._log = log
        self.env: EnvState | None = None
        self._routes: list[tuple[str, re.Pattern[str], _Route]] = [
            ("GET", re.compile(rf"{_RUNTIME}/invocation/next"), self._runtime_next),
            ("POST", re.compile(rf"{_RUNTIME}/invocation/(?P<id>[^/]+)/response"),
             self._runtime_response),
            ("POST", re.compile(rf"{_RUNTIME}/invocation/(?P<id>[^/]+)/error"),
             self._runtime_error),
            ("POST", re.compile(rf"{_RUNTIME}/init/error"), self._runtime_init_error),
            ("GET", re.compile(rf"{_RUNTIME}/restore/next"), self._restore_next),
            ("GET", re.compile(CREDENTIALS_PATH), self._credentials),
            ("POST", re.compile(rf"{_RUNTIME}/restore/error"), self._restore_error),
            ("POST", re.compile(rf"{_EXTENSION}/register"), self._register),
            ("GET", re.compile(rf"{_EXTENSION}/event/next"), self._extension_next),
            ("POST", re.compile(rf"{_EXTENSION}/init/error"), self._extension_init_error),
            ("POST", re.compile(rf"{_EXTENSION}/exit/error"), self._extension_exit_error),
            ("PUT", re.compile(rf"{_TELEMETRY}/?"), self._subscribe),
        ]
        self._httpd = _Server(("127.0.0.1", 0), _handler_class(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="sandbox-lambda-apis", daemon=True)

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: the value of ``AWS_LAMBDA_RUNTIME_API``."""
        host, port = self._httpd.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()

    def dispatch(self, request: Request) -> Response:
        env = self.env
        for method, pattern, route in self._routes:
            match = pattern.fullmatch(request.path.split("?", 1)[0])
            if match and method == request.method:
                if env is None or env.closed:
                    return Response.error(500, "Sandbox.NoEnvironment",
                                          "no execution environment is running")
                return route(env, Request(request.method, request.path, request.headers,
                                          request.body, match.groupdict()))
        return Response.error(404, "InvalidRequest",
                              f"{request.method} {request.path} is not a Lambda API")

    # -- Runtime API ----------------------------------------------------------------------

    def _runtime_next(self, env: EnvState, request: Request) -> Response:
        with env.cond:
            env.runtime_next_calls += 1
            env.runtime_waiting = True
            env.last_next_at = time.monotonic()
            env.cond.notify_all()
            # Managed instances: several runtime workers wait here at once; each takes
            # the oldest pending invocation.
            while env.for_runtime is None and not env.pending and not env.closed:
                env.cond.wait()
            if env.closed:
                return Response.error(500, "Sandbox.Closed", "the environment was shut down")
            if env.for_runtime is not None:
                invocation, env.for_runtime = env.for_runtime, None
            else:
                invocation = env.pending.popleft()
            invocation.taken = True
            env.runtime_waiting = False
            env.cond.notify_all()
        # Content-Type always: awslambdaric's native client crashes without it.
        return Response(200, invocation.event, {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": invocation.function_arn,
            "Lambda-Runtime-Trace-Id": invocation.trace_id,
        })

    def _runtime_result(
        self, env: EnvState, request: Request, *, error: dict[str, Any] | None
    ) -> Response:
        with env.cond:
            invocation = env.current
            if invocation is None or invocation.request_id != request.params["id"]:
                invocation = env.inflight.get(request.params["id"])
            if invocation is None:
                return Response.error(400, "InvalidRequestID",
                                      f"no current invocation {request.params['id']!r}")
            if invocation.responded is not None:
                return Response.error(403, "InvalidStateTransition",
                                      "the invocation already has a response")
            invocation.responded = time.monotonic()
            invocation.response = request.body
            invocation.content_type = request.header("Content-Type") or "application/json"
            if error is not None:
                invocation.error = error
                invocation.error_type = (request.header("Lambda-Runtime-Function-Error-Type")
                                         or str(error.get("errorType") or "Unhandled"))
            env.cond.notify_all()
        duration_ms = (invocation.responded - invocation.started) * 1000
        record: dict[str, Any] = {
            "requestId": invocation.request_id,
            "status": "success" if error is None else "error",
            "tracing": tracing(invocation),
            "spans": [
                {"name": "responseLatency", "start": iso_time(invocation.started_wall_ms / 1000),
                 "durationMs": round(duration_ms, 3)},
                {"name": "responseDuration", "start": iso_time(time.time()), "durationMs": 0.0},
            ],
            "metrics": {"durationMs": round(duration_ms, 3), "producedBytes": len(request.body)},
        }
        if error is not None:
            record["errorType"] = invocation.error_type
        if not env.managed_instances:  # Managed Instances send platform.report only
            env.hub.emit("platform", "platform.runtimeDone", record)
        return ACCEPTED

    def _runtime_response(self, env: EnvState, request: Request) -> Response:
        return self._runtime_result(env, request, error=None)

    def _runtime_error(self, env: EnvState, request: Request) -> Response:
        body = request.json()
        error = body if isinstance(body, dict) else {
            "errorMessage": request.body.decode("utf-8", "replace"), "errorType": "Unhandled"}
        return self._runtime_result(env, request, error=error)

    def _runtime_init_error(self, env: EnvState, request: Request) -> Response:
        body = request.json()
        message = str(body.get("errorMessage", "")) if isinstance(body, dict) else ""
        error_type = request.header("Lambda-Runtime-Function-Error-Type") or (
            str(body.get("errorType")) if isinstance(body, dict) else "Runtime.Unknown")
        with env.cond:
            env.init_error = env.init_error or ErrorReport("runtime", error_type, message)
            env.cond.notify_all()
        return ACCEPTED

    # -- SnapStart: the runtime's restore hooks --------------------------------------------

    def _restore_next(self, env: EnvState, request: Request) -> Response:
        """The runtime ran its before-snapshot hooks; it blocks here across the snapshot
        until the environment is restored, then runs its after-restore hooks."""
        if env.init_type != "snap-start":
            return Response.error(403, "InvalidStateTransition",
                                  "restore/next is only available with SnapStart")
        with env.cond:
            env.restore_waiting = True
            env.last_next_at = time.monotonic()
            env.cond.notify_all()
            while not env.restore_released and not env.closed:
                env.cond.wait()
            env.restore_waiting = False
            env.cond.notify_all()
            if env.closed:
                return Response.error(500, "Sandbox.Closed", "the environment was shut down")
        return Response(200, b"", {"Content-Type": "application/json"})

    def _credentials(self, env: EnvState, request: Request) -> Response:
        """The container credentials endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI) that
        SnapStart environments get instead of credential variables."""
        with env.cond:
            token, answer = env.credentials_token, dict(env.credentials)
        if token is None or request.header("Authorization") != token:
            return Response.error(403, "AccessDenied",
                                  "send AWS_CONTAINER_AUTHORIZATION_TOKEN as Authorization")
        return Response.of_json(200, answer)

    def _restore_error(self, env: EnvState, request: Request) -> Response:
        body = request.json()
        message = str(body.get("errorMessage", "")) if isinstance(body, dict) else ""
        error_type = request.header("Lambda-Runtime-Function-Error-Type") or "Runtime.Unknown"
        with env.cond:
            env.restore_error = env.restore_error or ErrorReport("runtime", error_type, message)
            env.cond.notify_all()
        return ACCEPTED

    # -- Extensions API -------------------------------------------------------------------

    def _register(self, env: EnvState, request: Request) -> Response:
        name = request.header("Lambda-Extension-Name")
        body = request.json()
        events = body.get("events") if isinstance(body, dict) else None
        if not name:
            return Response.error(403, "Extension.MissingHeader",
                                  "Lambda-Extension-Name header is required")
        if not isinstance(events, list) or not set(events) <= _EVENTS:
            return Response.error(400, "InvalidEventType",
                                  f"events must be a subset of {sorted(_EVENTS)}, got {events!r}")
        if env.managed_instances and set(events) - {"SHUTDOWN"}:
            # As Lambda Managed Instances' RAPID does (aws-lambda-runtime-interface-emulator,
            # internal/lambda-managed-instances: ValidateExternalAgentEvent): SHUTDOWN only.
            refused = sorted(set(events) - {"SHUTDOWN"})[0]
            self._log(f"EXTENSION\tName: {name}\tState: RegistrationRefused\t"
                      f"Events: [{','.join(events)}]")
            return Response.error(403, "Extension.InvalidEventType",
                                  f"{refused}: ErrorInvalidEventType")
        with env.cond:
            if env.phase != "init":
                return Response.error(403, "Extension.InvalidRequest",
                                      "extensions can register only during the init phase")
            if env.extension_by_name(name) is not None:
                return Response.error(409, "Extension.AlreadyRegistered",
                                      f"an extension named {name!r} is already registered")
            ext = ExtensionState(name, str(uuid.uuid4()), frozenset(events))
            env.extensions[ext.identifier] = ext
            env.cond.notify_all()
        self._log(f"EXTENSION\tName: {name}\tState: Ready\tEvents: [{','.join(events)}]")
        env.hub.emit("platform", "platform.extension",
                     {"name": name, "state": "Ready", "events": list(events)})
        answer: dict[str, Any] = {"functionName": env.function_name,
                                  "functionVersion": "$LATEST", "handler": env.handler}
        if "accountId" in request.header("Lambda-Extension-Accept-Feature"):
            answer["accountId"] = _ACCOUNT_ID
        return Response.of_json(200, answer, **{"Lambda-Extension-Identifier": ext.identifier})

    def _registered(self, env: EnvState, request: Request) -> ExtensionState | Response:
        identifier = request.header("Lambda-Extension-Identifier")
        if not identifier:
            return Response.error(403, "Extension.MissingExtensionIdentifier",
                                  "Lambda-Extension-Identifier header is required")
        ext = env.extensions.get(identifier)
        if ext is None:
            return Response.error(403, "Extension.UnknownExtensionIdentifier",
                                  f"no registered extension has identifier {identifier!r}")
        return ext

    def _extension_next(self, env: EnvState, request: Request) -> Response:
        with env.cond:
            ext = self._registered(env, request)
            if isinstance(ext, Response):
                return ext
            ext.next_calls += 1
            ext.waiting = True
            env.last_next_at = time.monotonic()
            env.cond.notify_all()
            while not ext.queue and not env.closed:
                env.cond.wait()
            if not ext.queue:
                return Response.error(500, "Sandbox.Closed", "the environment was shut down")
            event = ext.queue.popleft()
            ext.waiting = False
            if event["eventType"] == "INVOKE":
                ext.last_request_id = str(event["requestId"])
            else:
                ext.got_shutdown = True
            env.cond.notify_all()
        return Response.of_json(200, event,
                                **{"Lambda-Extension-Event-Identifier": str(uuid.uuid4())})

    def _extension_error(self, env: EnvState, request: Request, *, kind: str) -> Response:
        error_type = request.header("Lambda-Extension-Function-Error-Type")
        body = request.json()
        message = str(body.get("errorMessage", "")) if isinstance(body, dict) else ""
        with env.cond:
            ext = self._registered(env, request)
            if isinstance(ext, Response):
                return ext
            if not error_type:
                return Response.error(400, "Extension.MissingHeader",
                                      "Lambda-Extension-Function-Error-Type header is required")
            report = ErrorReport(ext.name, error_type, message)
            if kind == "init":
                env.init_error = env.init_error or report
            else:
                env.exit_error = env.exit_error or report
            env.cond.notify_all()
        return ACCEPTED

    def _extension_init_error(self, env: EnvState, request: Request) -> Response:
        return self._extension_error(env, request, kind="init")

    def _extension_exit_error(self, env: EnvState, request: Request) -> Response:
        return self._extension_error(env, request, kind="exit")

    # -- Telemetry API --------------------------------------------------------------------

    def _subscribe(self, env: EnvState, request: Request) -> Response:
        with env.cond:
            ext = self._registered(env, request)
            if isinstance(ext, Response):
                return ext
        body = request.json()
        if (env.managed_instances and isinstance(body, dict)
                and body.get("schemaVersion") != MANAGED_INSTANCES_SCHEMA):
            # AWS documents 2025-01-29 as the only schema managed instances accept.
            return Response.error(400, "ValidationError",
                                  f"Lambda Managed Instances accept only schemaVersion "
                                  f"{MANAGED_INSTANCES_SCHEMA!r}, got "
                                  f"{body.get('schemaVersion')!r}")
        try:
            env.hub.subscribe(ext.name, body)
        except TelemetryRequestError as exc:
            return Response.error(400, "ValidationError", str(exc))
        with env.cond:
            env.subscriptions.append({"extension": ext.name, **body})
        env.hub.emit("platform", "platform.telemetrySubscription",
                     {"name": ext.name, "state": "Subscribed", "types": body["types"]})
        return Response(200, b"OK", {"Content-Type": "text/plain"})


def tracing(invocation: Invocation) -> dict[str, str]:
    """The ``tracing`` object of platform events for this invocation."""
    return {"spanId": invocation.request_id.replace("-", "")[:16],
            "type": "X-Amzn-Trace-Id", "value": invocation.trace_id}


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a runtime worker killed with its keep-alive connection open
        super().handle_error(request, client_address)


def _handler_class(server: LambdaApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the runtime client expects
        # Headers and body leave in separate writes: with Nagle on, the body waits for
        # the client's delayed ACK (~40 ms per call).
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            request = Request(self.command, self.path,
                              {k.lower(): v for k, v in self.headers.items()}, self._body())
            response = server.dispatch(request)
            try:
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)
                self.wfile.flush()
            except OSError:
                self.close_connection = True  # the caller died (killed, reset): nobody to tell

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline().strip():
                    pass  # trailers
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return  # the log stream shows what matters; access logs would drown it

    return Handler
