"""The service's middleware, outermost first (each a pure ASGI middleware, streaming-safe):

* :class:`RequestGuard`: a request id on every answer, a :class:`~mmretrieval.serving.http.errors.Refused` from the
  guards inside it answered as JSON, the last-resort 500, the request metrics;
* :class:`TrustedHosts`: Starlette's ``TrustedHostMiddleware`` on the Host header (400);
* :class:`SameOrigin`: a cross-origin request from an origin that is not allowed (403);
* :class:`BodyLimit`: the body size, from Content-Length and while streaming (413).

Starlette's ``CORSMiddleware`` (only with ``MMR_CORS_ORIGINS``) sits inside them.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mmretrieval.serving.http.errors import ErrorJSON, Refused
from mmretrieval.serving.http.metrics import Metrics
from mmretrieval.serving.http.redaction import Redactor, key_like

log = logging.getLogger(__name__)
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")  # an incoming X-Request-ID of this shape is kept
TRUSTED = "mmr.trusted_host"  # scope key: TrustedHostMiddleware let the request through


class RequestGuard:
    """Gives each request an id (a well-formed incoming ``X-Request-ID`` is kept; every answer carries it as
    ``X-Request-ID``), answers a :class:`Refused` with its status, any other exception with a logged 500 (never a
    reset connection), and counts each answer in ``metrics`` by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, redact: Redactor) -> None:
        self.app = app
        self.metrics = metrics
        self.redact = redact

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Refused as e:
            status = status or await answer(send, e.status, e.detail, request_id, e.retry_after)
        except Exception as e:  # noqa: BLE001 - the last resort: a 500 with a request id, never a reset connection
            frames = " < ".join(f"{Path(f.filename).name}:{f.lineno}"
                                for f in traceback.extract_tb(e.__traceback__)[::-1][:8])
            log.error("request %s %s %s failed: %s: %s [%s]", request_id, scope["method"], scope["path"][:200],
                      type(e).__name__, self.redact(str(e))[:500], frames)
            status = status or await answer(send, 500, f"internal error; quote request id {request_id}", request_id)
        route = scope.get("route")
        self.metrics.observe(scope["method"], getattr(route, "path", "unmatched"), status or 500,
                             time.perf_counter() - started)


async def answer(send: Send, status: int, detail: str, request_id: str, retry_after: int | None = None) -> int:
    """Send the error body for a request the application did not answer (413 also closes the connection; a
    ``retry_after`` in seconds becomes the ``Retry-After`` header)."""
    body = ErrorJSON({"detail": detail, "request_id": request_id, "errors": []}).body
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()), *([(b"connection", b"close")] if status == 413 else []),
        *([(b"retry-after", str(retry_after).encode())] if retry_after is not None else [])]})
    await send({"type": "http.response.body", "body": body})
    return status


class TrustedHosts:
    """Answers only requests whose Host header is one of ``allowed_hosts`` (``*.example.org``, ``*``): Starlette's
    ``TrustedHostMiddleware`` decides; its refusal becomes :class:`Refused` (400) so that it is answered like every
    other refusal (JSON with a request id) instead of Starlette's plain text. An IPv6 address may be given without
    the brackets a Host header carries (``::1`` matches ``[::1]:8000``)."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        hosts = [f"[{h}]" if ":" in h and not h.startswith("[") else h for h in allowed_hosts]
        self.check = TrustedHostMiddleware(self._trusted, allowed_hosts=hosts, www_redirect=False)

    async def _trusted(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[TRUSTED] = True
        await self.app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_unless_refused(message: Message) -> None:
            if not scope.get(TRUSTED):  # TrustedHostMiddleware's own answer: the host is not trusted
                raise Refused(400, "the Host header is not a trusted host (set MMR_TRUSTED_HOSTS)")
            await send(message)

        await self.check(scope, receive, send_unless_refused)


class SameOrigin:
    """Refuses (403) a request with an ``Origin`` that is neither its own host nor one of ``allowed_origins``
    (``*``: any). Starlette's ``CORSMiddleware`` only tells a browser which answers it may read; this refuses the
    request before any work."""

    def __init__(self, app: ASGIApp, allowed_origins: Sequence[str]) -> None:
        self.app = app
        self.allowed = tuple(allowed_origins)

    def allows(self, origin: str, host: str) -> bool:
        if "*" in self.allowed or origin.rstrip("/") in self.allowed:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and not self.allows(origin, headers.get("host", "")):
                raise Refused(403, "cross-origin requests are refused (allow an origin with MMR_CORS_ORIGINS)")
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuses a request body over its limit in bytes (413): ``json_bytes``, or on the upload routes
    ``upload_bytes`` plus 64 KiB of form fields. Checked from Content-Length before the application runs, and
    while the body streams (a body without Content-Length is cut off at the limit)."""

    FORM_FIELDS = 64 * 1024

    def __init__(self, app: ASGIApp, json_bytes: int, upload_bytes: int) -> None:
        self.app = app
        self.json_bytes = json_bytes
        self.upload_bytes = upload_bytes

    def limit(self, path: str) -> int:
        return self.upload_bytes + self.FORM_FIELDS if path.endswith("/search/upload") else self.json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["path"])
        length = Headers(scope=scope).get("content-length")
        if length is not None and not length.isdigit():
            raise Refused(400, "the Content-Length header is not a number")
        if length is not None and int(length) > limit:
            raise Refused(413, f"the request body has {int(length)} bytes; the limit is {limit}")
        seen, started, refused = 0, False, None

        async def counted_receive() -> Message:
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b"")) if message["type"] == "http.request" else 0
            if seen > limit:
                refused = Refused(413, f"the request body is larger than {limit} bytes")
                raise refused
            return message

        async def send_unless_cut_off(message: Message) -> None:
            nonlocal started
            if refused is not None and not started:
                return  # the application's own answer to a cut-off body: the request guard answers 413 instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted_receive, send_unless_cut_off)
        if refused is not None:
            raise refused


class NoKeyInQuery:
    """Refuses (400) a request with a credential in its query string (``?api_key=``, ``?X-API-Key=``, percent-encoded
    names included): keys go in the ``X-API-Key`` header only, so that they never sit in URLs, browser history,
    proxy or access logs. (Every log line is redacted too: :class:`~mmretrieval.serving.http.redaction.Redactor`.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            from urllib.parse import parse_qsl

            query = scope["query_string"].decode("latin-1")
            if any(key_like(name) for name, _ in parse_qsl(query, keep_blank_values=True)):
                raise Refused(400, "API keys are not accepted in the URL (they would end up in logs and proxies); "
                                   "send the key in the X-API-Key header")
        await self.app(scope, receive, send)


class InFlightLimit:
    """Answers 503 with ``Retry-After`` when ``limit`` requests are already being handled (health checks are neither
    counted nor refused, so that a busy service is not mistaken for a dead one)."""

    EXEMPT = ("/health/live", "/health/ready")

    def __init__(self, app: ASGIApp, limit: int, retry_after: int = 1) -> None:
        self.app = app
        self.limit = max(1, limit)
        self.retry_after = retry_after
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            raise Refused(503, f"{self.in_flight} requests are in flight (MMR_MAX_IN_FLIGHT={self.limit}); retry "
                               "later", retry_after=self.retry_after)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
