"""Every refusal and failure as the same JSON body (:class:`~mmretrieval.serving.http.schemas.ErrorBody`):
``detail`` (redacted), ``request_id`` and, for 422, the invalid fields."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from mmretrieval.core.errors import AliasNotFoundError, MediaError, MMRError, QueryError

log = logging.getLogger(__name__)


class ErrorJSON(JSONResponse):
    """JSON rendered ASCII-only, so text that is not valid Unicode can never break the response."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class Refused(Exception):
    """A refusal decided by a guard (middleware) before the application answers: HTTP ``status`` and ``detail``
    (and the seconds of a ``Retry-After`` header, for a 503)."""

    def __init__(self, status: int, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


def request_id(request: Request) -> str:
    """The id the request guard gave this request (``-`` outside it)."""
    return str(request.scope.get("state", {}).get("request_id", "-"))


def body(request: Request, detail: str, fields: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"detail": detail, "request_id": request_id(request), "errors": fields or []}


async def library_error(request: Request, exc: MMRError) -> ErrorJSON:
    """A library error: 404 no published collection, 400 a bad query or medium, 503 otherwise (with Retry-After)."""
    status = 404 if isinstance(exc, AliasNotFoundError) else 400 if isinstance(exc, (QueryError, MediaError)) \
        else 503
    detail = request.app.state.service.redact(str(exc))
    if status == 503:
        log.warning("request %s: %s", request_id(request), detail)
    return ErrorJSON(status_code=status, content=body(request, detail),
                     headers={"Retry-After": "5"} if status == 503 else None)


async def http_error(request: Request, exc: HTTPException) -> ErrorJSON:
    detail = request.app.state.service.redact(str(exc.detail))
    return ErrorJSON(status_code=exc.status_code, headers=exc.headers, content=body(request, detail))


async def invalid_request(request: Request, exc: RequestValidationError) -> ErrorJSON:
    """422 naming the first invalid fields; the offending input is never echoed."""
    redact = request.app.state.service.redact
    fields = [{"loc": [x if isinstance(x, int) else redact(str(x))[:64] for x in e.get("loc", ())],
               "msg": redact(str(e.get("msg", "")))[:300], "type": str(e.get("type", ""))}
              for e in exc.errors()[:20]]
    where = ", ".join(".".join(str(x) for x in f["loc"]) + ": " + f["msg"] for f in fields[:3])
    return ErrorJSON(status_code=422, content=body(request, f"invalid request: {where}", fields))


HANDLERS: dict[type[Exception], Callable[[Request, Any], Awaitable[ErrorJSON]]] = {
    MMRError: library_error, HTTPException: http_error, RequestValidationError: invalid_request}
