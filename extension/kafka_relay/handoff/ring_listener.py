"""The ring transport's listener: one thread, one selector over every handler's connection.

A handler process says HELLO (the handoff token and its ring file's path) once per
connection, then one BODY message per batch it appended to its ring (``kafka_relay.ring``).
A body is validated in place by the handoff's own reader and handed over by the same
routine as ``POST /v1/records`` (``server.accept_records``: admission, the same 400
reasons, the same refusals), and answered with the status and JSON that route would send,
once the ledger owns the records; a refused body is marked so in the file. The ring is the
records' journal (delivery/rings.py). Before a SnapStart restore HELLO is refused like a
body (``NOT_RESTORED``) and the connection closed, so none is open at the snapshot.

On demand the socket is bound before ``/next`` (``prepare``): a handler's first connection
waits in its backlog until the extension is assembled, as on the handoff port.
"""

from __future__ import annotations

import contextlib
import mmap
import selectors
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from kafka_relay.config import Config
from kafka_relay.delivery.rings import Entry, RingFile, Rings
from kafka_relay.handoff.body import MAPPED_BODY_BYTES, Body, too_large, trim_heap
from kafka_relay.handoff.idempotency import Answer
from kafka_relay.handoff.schema import framed_records
from kafka_relay.handoff.server import (
    MAX_BODY_HINT,
    HandoffState,
    accept_records,
    accepted_body,
    answer_json,
    not_restored,
    token_refusal,
)
from kafka_relay.protocol import FRAMES_HEAD, FRAMES_TYPE
from kafka_relay.record import Record
from kafka_relay.ring import (
    ACCEPTED,
    MAX_MESSAGE,
    REFUSED,
    REFUSED_ALREADY,
    VERSION,
    Ring,
    answer,
    body_records,
    read_body_message,
    read_hello,
    record_ids,
    tag_of,
)

_RESTORED = answer_json(410, {"error": "restored from a snapshot since this ring was made: "
                                       "a ring of this copy's own takes the body"})
_RECHECK_S = 0.05
_RECHECKS = 100  # then the next init takes the file over
_MAX_TOLD_OLD = 1024  # older rings remembered as told about, before starting over


def ring_reader(config: Config, wall_ms: Callable[[], int]) -> Callable[
        [bytes, list[str], str | None], list[Record]]:
    """A ring body's Records with the ids and request id given (a takeover's reader), by the
    handoff's rules; ValueError (InvalidRequest) when it does not validate."""

    def read(body: bytes, ids: list[str], request_id: str | None) -> list[Record]:
        return framed_records(body, default_topic=config.default_topic,
                              new_ids=lambda _count: ids, request_id=request_id,
                              now_ms=wall_ms())

    return read


class _Connection:
    __slots__ = ("file", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file: RingFile | None = None


class RingListener:
    def __init__(self, state: HandoffState, rings: Rings, listening: socket.socket, *,
                 take_over: Callable[[RingFile], int]) -> None:
        """``take_over``: own again what a ring's earlier extension accepted and did not
        settle (a writer that outlived it says hello)."""
        self._state = state
        self._rings = rings
        self._listening = listening
        self._take_over = take_over
        self._selector = selectors.DefaultSelector()
        self._stop_r, self._stop_w = socket.socketpair()
        # Rings whose writer's connection closed while it still held the file: asked again.
        self._departed: dict[RingFile, int] = {}
        # Older writers told once each: such a client says hello again at every send.
        self._told_old: set[Path] = set()
        self._trim = False  # a large body was taken: trim the heap after its answer
        self._thread = threading.Thread(target=self._serve, name="kafka-relay-ring",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._stop_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join(2.0)

    def _serve(self) -> None:
        self._listening.setblocking(False)
        self._selector.register(self._listening, selectors.EVENT_READ, None)
        self._selector.register(self._stop_r, selectors.EVENT_READ, self._stop_r)
        try:
            while True:
                ready = self._selector.select(_RECHECK_S if self._departed else None)
                self._recheck()
                for key, _events in ready:
                    if key.data is self._stop_r:
                        return
                    if key.data is None:
                        self._accept()
                    else:
                        self._readable(key.data)
        finally:
            for key in list(self._selector.get_map().values()):
                if isinstance(key.data, _Connection):
                    key.data.sock.close()
            self._selector.close()
            self._listening.close()
            self._stop_r.close()
            self._stop_w.close()

    def _recheck(self) -> None:
        for file, left in list(self._departed.items()):
            if self._rings.writer_left(file) or left <= 1:
                del self._departed[file]
            else:
                self._departed[file] = left - 1

    def _accept(self) -> None:
        try:
            sock, _ = self._listening.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(True)
        self._selector.register(sock, selectors.EVENT_READ, _Connection(sock))

    def _readable(self, conn: _Connection) -> None:
        try:
            message = conn.sock.recv(MAX_MESSAGE)
        except OSError:
            message = b""
        if not message:
            self._close(conn)
            return
        try:
            if conn.file is None:
                reply, keep = self._hello(conn, message)
            else:
                reply, keep = self._body(conn.file, message), True
        except Exception as exc:  # a bug must not leave the handler without an answer
            self._state.logger.error("handoff.failed", error=repr(exc), transport="ring")
            reply, keep = answer_json(500, {"error": f"kafka-relay failed on this body: "
                                                     f"{exc!r}"}), False
        try:
            for part in answer(reply.status, reply.body):
                conn.sock.send(part)
        except OSError:
            keep = False
        if self._trim:  # answered: a large body's transient copies can go
            self._trim = False
            trim_heap()
        if not keep:
            self._close(conn)

    def _close(self, conn: _Connection) -> None:
        self._selector.unregister(conn.sock)
        conn.sock.close()
        if conn.file is not None and not self._rings.writer_left(conn.file):
            self._departed[conn.file] = _RECHECKS

    def _hello(self, conn: _Connection, message: bytes) -> tuple[Answer, bool]:
        state = self._state
        try:
            token, path = read_hello(message)
        except ValueError as exc:
            return answer_json(400, {"error": str(exc)}), False
        refused = token_refusal(state.config.token, token)
        if refused is not None:
            return answer_json(401, {"error": refused}), False
        refusal = state.admit()
        if refusal is not None:  # nothing kept open before a restore (SnapStart)
            return not_restored(refusal), False
        tag = tag_of(path, state.config.port)
        if tag is None or path.parent != state.config.ring_dir:
            return answer_json(404, {"error": f"{path} is not a ring file of this extension "
                                              f"(KAFKA_RELAY_RING_DIR="
                                              f"{state.config.ring_dir}): set the same "
                                              "KAFKA_RELAY_RING_DIR and KAFKA_RELAY_PORT on "
                                              "both sides"}), False
        known = path in self._rings.files
        try:
            ring = Ring.open(path)
        except (OSError, ValueError) as exc:
            return _cannot_open(path, exc), False
        if ring.version != VERSION:  # an older client's: it hands its bodies over HTTP
            ring.close()
            return self._older(path, ring.version), False
        try:
            file = self._rings.attach(ring, tag, state.ids.prefix)
        except OSError as exc:
            ring.close()
            return _cannot_open(path, exc), False
        if file.era != state.ids.prefix:
            return _RESTORED, False
        if not known:  # a ring an earlier extension served: what it accepted is ours now
            self._take_over(file)
        conn.file = file
        return answer_json(200, {"ok": True}), True

    def _older(self, path: Path, version: int) -> Answer:
        """The refusal of a ring of an older format; logged once per file (such a client
        says hello again at every send)."""
        if len(self._told_old) >= _MAX_TOLD_OLD:
            self._told_old.clear()
        if path not in self._told_old:
            self._told_old.add(path)
            self._state.logger.warning(
                "ring.old_version", path=str(path), version=version,
                hint=f"a handler's client writes ring files of version {version}, this "
                     f"extension version {VERSION}: its records go over HTTP; use the client "
                     "of the same layer")
        return answer_json(404, {"error": f"{path} is a ring file of version {version}; this "
                                          f"extension takes version {VERSION} over the ring: "
                                          "use the client of the same kafka-relay layer"})

    def _body(self, file: RingFile, message: bytes) -> Answer:
        state = self._state
        try:
            position, length = read_body_message(message)
        except ValueError as exc:
            return answer_json(400, {"error": str(exc)})
        ring = file.ring
        if ring.entry(position, length) is None:
            return answer_json(400, {"error": f"no {length}-byte entry at {position} in "
                                              f"{ring.path}"})
        if file.era != state.ids.prefix:
            self._rings.refused(file, position)
            return _RESTORED
        word = ring.state(position)
        if word & REFUSED:  # its answer was lost: nothing of it was taken
            return answer_json(REFUSED_ALREADY, {"error": "this entry was refused already; "
                                                          "append the body again"})
        if word & ACCEPTED:  # its answer was lost: the same answer again
            count = body_records(ring.body(position, min(length, FRAMES_HEAD.size)))
            return Answer(202, accepted_body(record_ids(file.tag, position, count)))
        limit = state.config.max_body_bytes
        if length > limit:
            self._rings.refused(file, position)
            refused = too_large(length, limit, MAX_BODY_HINT)
            return answer_json(refused.status, {"error": str(refused)})
        # A large body is read into a mapping of its own, as the HTTP route reads it
        # (handoff/body.py): unmapped when the records let go of it, not left in the heap.
        self._trim = length >= MAPPED_BODY_BYTES
        body: Body = ring.read_into(position, mmap.mmap(-1, length)) if self._trim else (
            ring.body(position, length))
        reply = accept_records(
            state, body, FRAMES_TYPE, ring.request_id(position), wait=False, wait_s=0.0,
            new_ids=lambda count: record_ids(file.tag, position, count),
            entry=Entry(file, position, length))
        if reply.status != 202:
            self._rings.refused(file, position)
        return reply


def _cannot_open(path: Path, exc: Exception) -> Answer:
    return answer_json(404, {"error": f"cannot open {path}: {exc}"})
