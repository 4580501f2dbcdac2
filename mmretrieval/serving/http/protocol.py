"""The HTTP/1.1 connection as uvicorn's h11 protocol with the deadlines and the cap uvicorn lacks (uvicorn#157).

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits forever for a request that arrives a
byte at a time. :func:`guarded_protocol` subclasses its ``H11Protocol``:

* **header deadline**: a request's headers must arrive within ``header_timeout`` seconds of its first byte (of the
  connection being made, for the first request), however slowly they trickle in;
* **body deadline**: its body must arrive within ``body_timeout`` seconds of its headers;
* a request that misses a deadline is answered ``408 Request Timeout`` (when nothing was answered yet) and its
  connection closed; the application sees ``http.disconnect``;
* **connection cap**: a connection made while ``max_connections`` are open is answered ``503`` with
  ``Retry-After`` (JSON, like every other error) on its first request, then closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from mmretrieval.serving.http.policy import SECURITY_HEADERS

log = logging.getLogger(__name__)


def raw_error(status: int, reason: str, detail: str, extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A complete ``connection: close`` HTTP/1.1 error response (JSON ``{detail, request_id, errors}``) as bytes,
    for answers given below the application."""
    body = json.dumps({"detail": detail, "request_id": "", "errors": []}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"), *extra, *SECURITY_HEADERS]
    return (f"HTTP/1.1 {status} {reason}\r\n".encode() + b"".join(k + b": " + v + b"\r\n" for k, v in head)
            + b"\r\n" + body)


def over_capacity(retry_after: int) -> Any:
    """The ASGI application a connection over the cap runs for its request: 503 with ``Retry-After``, closed."""
    body = json.dumps({"detail": "too many connections; retry later", "request_id": "", "errors": []}).encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"), (b"retry-after", str(retry_after).encode()), *SECURITY_HEADERS]})
        await send({"type": "http.response.body", "body": body})

    return app


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline, a body deadline and a connection cap (class attributes set by
    :func:`guarded_protocol`)."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 256
    retry_after: int = 1

    _deadline: asyncio.TimerHandle | None = None
    _phase: str = ""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning("%d connections open (MMR_MAX_CONNECTIONS=%d): answering 503", len(self.connections),
                        self.max_connections)
            self.app = over_capacity(self.retry_after)
        self._arm("headers", self.header_timeout)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Arm or cancel the deadline for the phase the client's side of the connection is in now."""
        state = self.conn.their_state
        if state is h11.IDLE and self.conn.our_state is h11.IDLE:
            waiting = bool(self.conn.trailing_data[0])  # part of the next request's head has arrived
            if waiting:
                self._arm("headers", self.header_timeout)
            elif self._phase != "headers" or self.timeout_keep_alive_task is not None:
                self._disarm()  # an idle keep-alive connection: uvicorn's keep-alive timeout closes it
        elif state is h11.SEND_BODY:
            self._arm("body", self.body_timeout)
        else:
            self._disarm()

    def _arm(self, phase: str, seconds: float) -> None:
        if self._phase == phase and self._deadline is not None:
            return  # one deadline per phase, however many bytes trickle in
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired, phase, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, ""

    def _expired(self, phase: str, seconds: float) -> None:
        self._deadline, self._phase = None, ""
        if self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.warning("closing the connection of %s: the request %s did not arrive within %g s", client, phase, seconds)
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(raw_error(408, "Request Timeout", f"the request {phase} did not arrive within "
                                                                   f"{seconds:g} s"))
        self.transport.close()


def guarded_protocol(header_timeout: float, body_timeout: float, max_connections: int,
                     retry_after: int = 1) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` subclass with these limits (seconds; connections), for uvicorn's ``http``."""
    return type("MMRProtocol", (GuardedH11Protocol,), {
        "header_timeout": header_timeout, "body_timeout": body_timeout, "max_connections": max(1, max_connections),
        "retry_after": retry_after})
