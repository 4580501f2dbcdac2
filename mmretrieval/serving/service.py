"""HTTP service (FastAPI): ``mmr serve``. One process serves one or more datasets.

Routes (``{name}`` is one of the served datasets; the routes without ``/datasets/{name}`` use the first one):

* ``GET /`` the search page (static files shipped in the package, no CDN); ``GET /docs`` the OpenAPI page;
* ``GET /health/live`` (the process answers), ``GET /health/ready`` (every dataset's model loaded and a probe query
  answered; 503 otherwise), ``GET /metrics`` (Prometheus text format);
* ``GET /datasets``; ``GET [/datasets/{name}]/info``; ``POST [/datasets/{name}]/search`` (JSON);
  ``POST [/datasets/{name}]/search/upload`` (multipart image or audio, optional text to fuse);
  ``GET [/datasets/{name}]/items/{item_id}/thumbnail`` (a JPEG made from the item's clean media, found by its id).

Safe by default (:class:`ServiceConfig`): limits are checked before any work (Content-Length, a streaming cap on the
body, text and filter sizes, the image header's pixel count and sides); decoding and the model run in worker threads
with a bound on concurrent searches, so the event loop stays free for health checks; every refusal is a 4xx with a
``detail`` reason and a ``request_id``; an unexpected error is a 500 with the ``request_id`` that its log line carries.
Optional API keys (``X-API-Key``), a trusted-hosts list, and CORS off by default (a cross-origin request is refused
unless its origin is allowed). Secrets and absolute paths are removed from every message the service returns or logs.

The service owns its Milvus connection for its lifetime. With a Milvus Lite file that means one process per file:
publish while serving needs a Milvus server URI (see README, "Scaling out").
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmretrieval.core.config import Settings, get_settings
from mmretrieval.core.errors import AliasNotFoundError, ConfigError, MediaError, MMRError, QueryError
from mmretrieval.serving.client import MAX_K, MAX_TEXT, Hit, RetrievalClient

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff")
AUDIO_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "audio/flac", "audio/x-flac",
               "audio/ogg", "audio/mpeg")
MAX_REQUEST_FILTER_CHARS = 2000  # characters of a request's filter expression (the library takes up to
# filters.MAX_EXPRESSION_CHARS; the service admits less)
MAX_FILTER_TERMS = 64  # comparisons and boolean operators in a filter
MAX_FILTER_DEPTH = 16  # nested parentheses and brackets
MAX_LABELS = 100
MAX_WHERE = 16
MAX_ITEM_ID = 256
THUMB_SIDE = 256
THUMB_CACHE = 4096
LOOPBACK = ("127.0.0.1", "localhost", "::1")
Modality = Literal["text", "image", "audio", "video"]
Fusion = Literal["vector", "late"]


# --- configuration -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServiceConfig:
    """What the service accepts and from whom. :meth:`from_env` reads the ``MMR_*`` variables named below."""

    api_keys: tuple[str, ...] = ()  # MMR_API_KEYS (comma-separated) and MMR_API_KEYS_FILE (one per line); none: open
    trusted_hosts: tuple[str, ...] = LOOPBACK  # MMR_TRUSTED_HOSTS; Host header names (``*.example.org``, ``*``)
    cors_origins: tuple[str, ...] = ()  # MMR_CORS_ORIGINS; none: cross-origin requests are refused
    max_json_bytes: int = 64 * 1024  # a JSON request body
    max_upload_bytes: int = 10 * 1024 * 1024  # the uploaded file; the multipart body may add 64 KiB of form fields
    max_concurrent_searches: int = 4  # MMR_MAX_CONCURRENT_SEARCHES: searches (decode + model + Milvus) at once
    queue_seconds: float = 30.0  # a search waits this long for a slot, then 503 (with Retry-After)
    max_aspect: float = 20.0  # longest / shortest image side (a 50000x1 "thin" image is refused before decoding)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceConfig:
        env = os.environ if env is None else env
        keys = [k.strip() for k in env.get("MMR_API_KEYS", "").split(",") if k.strip()]
        if env.get("MMR_API_KEYS_FILE"):
            try:
                lines = Path(env["MMR_API_KEYS_FILE"]).read_text(encoding="utf-8").splitlines()
            except OSError as e:
                raise ConfigError(f"MMR_API_KEYS_FILE cannot be read: {e.strerror}") from e
            keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if any(len(k) < 16 for k in keys):
            raise ConfigError("API keys must have at least 16 characters (e.g. `python -c 'import secrets; "
                              "print(secrets.token_urlsafe(32))'`)")
        hosts = tuple(h.strip() for h in env.get("MMR_TRUSTED_HOSTS", "").split(",") if h.strip()) or LOOPBACK
        origins = tuple(o.strip().rstrip("/") for o in env.get("MMR_CORS_ORIGINS", "").split(",") if o.strip())
        searches = int(env.get("MMR_MAX_CONCURRENT_SEARCHES", "4"))
        return cls(api_keys=tuple(keys), trusted_hosts=hosts, cors_origins=origins,
                   max_concurrent_searches=max(1, searches))


class Redactor:
    """Removes secrets (Milvus password or token, API keys) and absolute paths from a message."""

    # absolute file paths under the usual roots (URL paths such as /health/live are left alone)
    PATH = re.compile(r"(?<![\w:/.~…-])/(?:home|root|tmp|work|usr|opt|var|srv|mnt|data|etc|proc|run|private|Users|"
                      r"Volumes|nix|snap|lib|lib64|bin|sbin|media|scratch|workspace|app)(?:/[^\s'\"/:,;()\[\]]+)+/?")

    def __init__(self, secrets: Sequence[str], paths: Sequence[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)
        self.paths = sorted({p.rstrip("/") for p in paths if len(p.rstrip("/")) > 1}, key=len, reverse=True)

    @classmethod
    def for_settings(cls, settings: Settings, config: ServiceConfig) -> Redactor:
        secrets = [settings.milvus_token, *settings.milvus_token.split(":", 1)[1:], *config.api_keys]
        parts = urlsplit(settings.milvus_uri) if "://" in settings.milvus_uri else None
        if parts is not None and parts.password:
            secrets += [parts.password, f"{parts.username}:{parts.password}"]
        return cls(secrets, [str(settings.home), str(Path(__file__).resolve().parents[1]), sys.prefix])

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        for path in self.paths:  # wherever they live: the workspace, the code, the environment
            text = text.replace(path + "/", "…/").replace(path, "…")
        text = self.PATH.sub(lambda m: "…/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class RedactingFilter(logging.Filter):
    """A logging filter for the handlers of a serving process: each record (its traceback included) is rendered
    once and passed through a :class:`Redactor`, so libraries that log a path or a URI (Milvus Lite names its file)
    cannot leak them. Installed by ``mmr serve`` (the CLI) on the root handlers; the library never installs it."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        record.msg, record.args, record.exc_info, record.exc_text = self.redact(text), (), None, None
        return True


# --- request and response models -------------------------------------------------------------------------------

def _no_surrogates(value: str) -> str:
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        raise ValueError("contains a lone surrogate (not valid Unicode text)")
    return value


def _where_keys(value: dict[str, str]) -> dict[str, str]:
    if bad := [k for k in value if not re.fullmatch(WHERE_KEY, k)]:
        raise ValueError(f"{len(bad)} metadata key(s) are not letters, digits and _ (at most 64)")
    return value


Text = Annotated[str, AfterValidator(_no_surrogates)]


def _not_bool(value: Any) -> Any:
    """JSON ``true``/``false`` are not integers (pydantic would read them as 1/0); 39.0 still is one. (Range
    constraints go before this validator in an ``Annotated``, or pydantic leaves them out of the JSON schema.)"""
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Label = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_surrogates)]
WHERE_KEY = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
WhereValue = Annotated[str, Field(max_length=200), AfterValidator(_no_surrogates)]
ItemId = Annotated[str, PathParam(min_length=1, max_length=MAX_ITEM_ID, pattern=r"^[^\x00-\x1f\x7f]+$",
                                  description="the item's id (no control characters)")]


UPLOAD_FIELDS = frozenset({"file", "text", "k", "modality", "fusion", "filter", "labels", "where"})  # upload_route's


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Annotated[Text, Field(min_length=1, max_length=MAX_TEXT, description="text query (blank: 400)")]
    k: Int = Field(10, ge=1, le=MAX_K, description="number of hits")
    modality: Modality | None = Field(None, description="only hits of this modality")
    filter: Annotated[Text, Field(max_length=MAX_REQUEST_FILTER_CHARS, description=(
        "Milvus boolean expression over the collection's scalar fields, e.g. `label == \"7\"`; at most "
        f"{MAX_FILTER_TERMS} comparisons and operators, nested at most {MAX_FILTER_DEPTH} deep"))] = ""
    labels: list[Label] = Field(default_factory=list, max_length=MAX_LABELS, description="only hits with one of "
                                "these labels")
    where: Annotated[dict[str, WhereValue], AfterValidator(_where_keys)] = Field(
        default_factory=dict, max_length=MAX_WHERE, json_schema_extra={"propertyNames": {"pattern": WHERE_KEY}},
        description="only hits whose metadata has these key/value pairs (keys: letters, digits, _)")
    rerank: Annotated[int, Field(ge=0, le=MAX_K), BeforeValidator(_not_bool)] | None = Field(None, description=(
        "re-rank the dual encoder's top N images with the serving model's cross-attention re-ranker (N >= k; hits "
        "then carry `dual_score`); 0: off; omitted: on at the configured depth when the model has a re-ranker that "
        "passed its gate and the search is over images"))


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    detail: str = Field(description="why the request was refused or failed")
    request_id: str = Field(description="quote it when reporting a problem; the service log carries it")
    errors: list[FieldError] = Field(default_factory=list, description="the invalid fields (422 only)")


class DatasetInfo(BaseModel):
    name: str
    default: bool
    ready: bool


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    datasets: dict[str, str] = Field(description="per dataset: `ready` or the reason it is not")


DESCRIPTIONS = {
    400: "Bad request: a filter that does not parse or is too complex, an image that does not decode or whose "
         "header declares too many pixels or a side out of bounds, an empty text, an untrusted Host header",
    401: "No API key (the `X-API-Key` header) where keys are configured",
    403: "A wrong API key, or a cross-origin request from an origin that is not allowed",
    404: "Nothing there: no published collection behind the dataset's alias, or no such item",
    413: "The request body or the uploaded file is larger than the limit (checked from Content-Length and while "
         "streaming)",
    415: "The uploaded file's content type is not one of the supported image or audio types",
    422: "The request does not match the schema (type, range, length, unknown field, invalid Unicode)",
    500: "An unexpected error; quote the request_id",
    503: "Not ready (model or collection not loaded, Milvus unavailable) or too busy; retry later",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in sorted({*codes, 400, 413, 500})}


class ErrorJSON(JSONResponse):
    """JSON rendered ASCII-only, so text that is not valid Unicode can never break the response."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class Refused(Exception):
    """A refusal decided by the middleware, before the application sees the request."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# --- per-dataset state -------------------------------------------------------------------------------------------

@dataclass
class DatasetState:
    name: str
    client: RetrievalClient
    ready: bool = False
    reason: str = "not loaded yet"
    serving: dict[str, str] = field(default_factory=dict)
    thumbs: dict[tuple[str, str], bytes | None] = field(default_factory=dict)
    thumbs_lock: threading.Lock = field(default_factory=threading.Lock)
    probed_at: float = 0.0


# --- the middleware: request id, hosts, origins, body limits, metrics, the last-resort 500 -------------------------

class Guard:
    """A pure ASGI middleware (streaming-safe) around the whole application."""

    def __init__(self, app: Any, config: ServiceConfig, metrics: Metrics, redact: Redactor) -> None:
        self.app = app
        self.config = config
        self.metrics = metrics
        self.redact = redact

    def _limit(self, path: str) -> int:
        return self.config.max_upload_bytes + 64 * 1024 if path.endswith("/search/upload") else \
            self.config.max_json_bytes

    def _host_ok(self, host: str) -> bool:
        trusted = self.config.trusted_hosts
        if "*" in trusted:
            return True
        name = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0] if host.count(
            ":") == 1 else host
        name = name.lower()
        return any(name == t.lower() or (t.startswith("*.") and name.endswith(t[1:].lower())) for t in trusted)

    def _origin_ok(self, origin: str, host: str) -> bool:
        if "*" in self.config.cors_origins or origin.rstrip("/") in self.config.cors_origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        incoming = headers.get("x-request-id", "")
        request_id = incoming if re.fullmatch(r"[A-Za-z0-9._-]{8,64}", incoming) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        state = {"status": 0, "refused": None}
        limit = self._limit(scope["path"])
        seen = 0

        async def guarded_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    state["refused"] = Refused(413, f"the request body is larger than {limit} bytes")
                    raise state["refused"]
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if state["refused"] is not None and not state["status"]:
                return  # the application's own answer to a cut-off body is replaced by the 413 below
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                   (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            refusal = self._check(scope, headers, limit)
            if refusal is not None:
                state["refused"] = refusal
            else:
                await self.app(scope, guarded_receive, guarded_send)
        except Refused as e:
            state["refused"] = e
        except Exception as e:  # noqa: BLE001 - the last resort: a 500 with a request id, never a reset connection
            frames = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in traceback.extract_tb(e.__traceback__)[
                ::-1][:8])
            log.error("request %s %s %s failed: %s: %s [%s]", request_id, scope["method"], scope["path"][:200],
                      type(e).__name__, self.redact(str(e))[:500], frames)
            if not state["status"]:
                await self._answer(send, 500, f"internal error; quote request id {request_id}", request_id, state)
        if state["refused"] is not None and not state["status"]:
            refused = state["refused"]
            assert isinstance(refused, Refused)
            await self._answer(send, refused.status, refused.detail, request_id, state)
        route = scope.get("route")
        self.metrics.observe(scope["method"], getattr(route, "path", "unmatched"), state["status"] or 500,
                             time.perf_counter() - started)

    def _check(self, scope: dict[str, Any], headers: dict[str, str], limit: int) -> Refused | None:
        host = headers.get("host", "")
        if not self._host_ok(host):
            return Refused(400, "the Host header is not a trusted host (set MMR_TRUSTED_HOSTS)")
        origin = headers.get("origin")
        if origin is not None and not self._origin_ok(origin, host):
            return Refused(403, "cross-origin requests are refused (allow an origin with MMR_CORS_ORIGINS)")
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return Refused(400, "the Content-Length header is not a number")
            if int(length) > limit:
                return Refused(413, f"the request body has {int(length)} bytes; the limit is {limit}")
        return None

    async def _answer(self, send: Callable[[dict[str, Any]], Awaitable[None]], status: int, detail: str,
                      request_id: str, state: dict[str, Any]) -> None:
        body = ErrorJSON({"detail": detail, "request_id": request_id, "errors": []}).body
        state["status"] = status
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()), *([(b"connection", b"close")] if status == 413 else [])]})
        await send({"type": "http.response.body", "body": body})


class Metrics:
    """Prometheus metrics in a registry of this application's own (nothing process-wide)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("mmr_http_requests", "HTTP requests answered", ["method", "route", "status"],
                                registry=self.registry)
        self.errors = Counter("mmr_http_errors", "HTTP requests answered with a 4xx or 5xx status",
                              ["route", "status"], registry=self.registry)
        self.latency = Histogram("mmr_http_request_duration_seconds", "time to answer, by route",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.serving = Gauge("mmr_serving_info", "the collection, model and data version each dataset serves (1)",
                             ["dataset", "collection", "model", "model_version", "data_version"],
                             registry=self.registry)
        self.ready = Gauge("mmr_dataset_ready", "1 when the dataset's model is loaded and a probe query answered",
                           ["dataset"], registry=self.registry)
        self.in_flight = Gauge("mmr_searches_in_flight", "searches running now (decode + model + Milvus)",
                               registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# --- the application ---------------------------------------------------------------------------------------------

def filter_problem(expr: str) -> str | None:
    """Why a filter is too complex to run (a cheap count before Milvus parses it), or ``None``."""
    terms = len(re.findall(r"\b(?:and|or|not|in|like)\b|&&|\|\||[=!<>]=?", expr, flags=re.IGNORECASE))
    if terms > MAX_FILTER_TERMS:
        return f"the filter has {terms} comparisons and operators; the limit is {MAX_FILTER_TERMS}"
    depth = deepest = 0
    for ch in expr:
        depth += ch in "([{"
        depth -= ch in ")]}"
        deepest = max(deepest, depth)
    if deepest > MAX_FILTER_DEPTH:
        return f"the filter nests {deepest} deep; the limit is {MAX_FILTER_DEPTH}"
    if expr.count(",") > 4 * MAX_FILTER_TERMS:
        return f"the filter lists {expr.count(',') + 1} values; the limit is {4 * MAX_FILTER_TERMS}"
    return None


def image_header_problem(data: bytes, max_pixels: int, min_side: int, max_aspect: float) -> str | None:
    """Check an uploaded image's declared size from its header alone (nothing is decoded), or ``None``."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        return f"the image header declares more than {max_pixels} pixels"
    except (OSError, ValueError, SyntaxError):
        return None  # not an image PIL recognises: the decoder says why
    if w * h > max_pixels:
        return f"the image is {w}x{h} ({w * h} pixels); the limit is {max_pixels} pixels"
    if min(w, h) < min_side:
        return f"the image is {w}x{h}; each side must be at least {min_side} pixels"
    if max(w, h) > max_aspect * min(w, h):
        return f"the image is {w}x{h}; its long side may be at most {max_aspect:g} times its short side"
    return None


def create_app(datasets: str | Sequence[str], settings: Settings | None = None,
               config: ServiceConfig | None = None) -> FastAPI:
    """The application for ``datasets`` (the first is the default). Nothing is loaded until its lifespan starts."""
    settings = settings or get_settings()
    config = config or ServiceConfig.from_env()
    names = [datasets] if isinstance(datasets, str) else list(dict.fromkeys(datasets))
    if not names:
        raise ConfigError("give at least one dataset to serve")
    redact = Redactor.for_settings(settings, config)
    metrics = Metrics()
    states: dict[str, DatasetState] = {}
    slots = threading.BoundedSemaphore(config.max_concurrent_searches)
    probe_lock = threading.Lock()

    def probe(state: DatasetState) -> None:
        """Load the model and collection and answer one query; record why not when that fails."""
        with probe_lock:
            state.probed_at = time.monotonic()
            try:
                info = state.client.info()
                state.client.search(text="probe", k=1)
            except Exception as e:  # noqa: BLE001 - any failure means not ready, never a service that cannot start
                state.ready, state.reason = False, redact(str(e) if isinstance(e, MMRError) else
                                                          f"{type(e).__name__}: {e}")
                log.warning("dataset %s is not ready: %s", state.name, state.reason)
            else:
                state.ready, state.reason = True, "ready"
                state.serving = {k: str(info.get(k) or "") for k in ("collection", "model", "model_version",
                                                                      "data_version")}
                metrics.serving.clear()
                for s in states.values():
                    if s.serving:
                        metrics.serving.labels(s.name, *s.serving.values()).set(1)
            metrics.ready.labels(state.name).set(int(state.ready))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        from starlette.concurrency import run_in_threadpool

        for name in names:
            states[name] = DatasetState(name, RetrievalClient(name, settings=settings))
            await run_in_threadpool(probe, states[name])
            log.info("dataset %s: %s %s", name, states[name].reason, states[name].serving)
        try:
            yield
        finally:
            for state in states.values():
                state.client.close()
            states.clear()

    app = FastAPI(title="mmretrieval", version="0.2.0", lifespan=lifespan, description=(
        f"Multimodal search over the serving alias of dataset(s) {', '.join(names)} (default {names[0]!r}). "
        "Errors carry a `detail` reason and a `request_id`."))
    app.state.config = config
    app.state.states = states
    if config.cors_origins:  # inside the Guard, which already refused origins that are not allowed
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["X-API-Key", "Content-Type", "X-Request-ID"], max_age=600)
    app.add_middleware(Guard, config=config, metrics=metrics, redact=redact)

    def request_id(request: Request) -> str:
        return str(request.scope.get("state", {}).get("request_id", "-"))

    @app.exception_handler(MMRError)
    async def mmr_error(request: Request, exc: MMRError) -> ErrorJSON:
        status = 404 if isinstance(exc, AliasNotFoundError) else 400 if isinstance(exc, (QueryError, MediaError)) \
            else 503
        detail = redact(str(exc))
        if status == 503:
            log.warning("request %s: %s", request_id(request), detail)
        return ErrorJSON(status_code=status, content={"detail": detail, "request_id": request_id(request),
                                                      "errors": []},
                         headers={"Retry-After": "5"} if status == 503 else None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> ErrorJSON:
        return ErrorJSON(status_code=exc.status_code, headers=exc.headers,
                         content={"detail": redact(str(exc.detail)), "request_id": request_id(request), "errors": []})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> ErrorJSON:
        fields = [{"loc": [x if isinstance(x, int) else redact(str(x))[:64] for x in e.get("loc", ())],
                   "msg": redact(str(e.get("msg", "")))[:300], "type": str(e.get("type", ""))}
                  for e in exc.errors()[:20]]  # the offending input is never echoed
        where = ", ".join(".".join(str(x) for x in f["loc"]) + ": " + f["msg"] for f in fields[:3])
        return ErrorJSON(status_code=422, content={"detail": f"invalid request: {where}",
                                                   "request_id": request_id(request), "errors": fields})

    api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="one of the keys in MMR_API_KEYS")

    def authorised(key: str | None = Depends(api_key)) -> None:  # noqa: B008
        if key is None:
            raise HTTPException(401, "an API key is required (header X-API-Key)",
                                headers={"WWW-Authenticate": "ApiKey"})
        given = key.encode("utf-8", "surrogateescape")
        if not any([hmac.compare_digest(given, k.encode()) for k in config.api_keys]):  # every key compared
            raise HTTPException(403, "the API key is not valid")

    guarded = [Depends(authorised)] if config.api_keys else []
    auth_codes = (401, 403) if config.api_keys else (403,)

    def run_search(state: DatasetState, **kwargs: Any) -> list[Hit]:
        """One search in a worker thread, holding one of the bounded slots; failures of the store mark not-ready."""
        if not slots.acquire(timeout=config.queue_seconds):
            raise HTTPException(503, "too many searches at once; retry later", headers={"Retry-After": "1"})
        metrics.in_flight.inc()
        try:
            hits = state.client.search(**kwargs)
        except (QueryError, MediaError):
            raise
        except MMRError as e:
            state.ready, state.reason = False, redact(str(e))
            metrics.ready.labels(state.name).set(0)
            raise
        finally:
            metrics.in_flight.dec()
            slots.release()
        if not state.ready:
            probe(state)
        return hits

    def check_filter(expr: str) -> None:
        if (problem := filter_problem(expr)) is not None:
            raise HTTPException(400, problem)

    def search(state: DatasetState, req: SearchRequest) -> list[Hit]:
        check_filter(req.filter)
        return run_search(state, text=req.text, k=req.k, modality=req.modality, filter=req.filter,
                          labels=req.labels, where=req.where, rerank=req.rerank)

    def upload(state: DatasetState, file: UploadFile, text: str | None, k: int, modality: str | None, fusion: str,
               filter: str, labels: list[str], where: str) -> list[Hit]:
        ctype = (file.content_type or "").split(";", 1)[0].strip().lower()
        if ctype not in IMAGE_TYPES + AUDIO_TYPES:
            raise HTTPException(415, f"content type {ctype[:80]!r} is not supported; use an image {IMAGE_TYPES} "
                                     f"or audio {AUDIO_TYPES} type")
        check_filter(filter)
        try:
            where_map = json.loads(where) if where.strip() else {}
            valid = isinstance(where_map, dict) and len(where_map) <= MAX_WHERE and all(
                isinstance(v, str) and re.fullmatch(WHERE_KEY, k) and len(v) <= 200
                for k, v in where_map.items())
        except (ValueError, RecursionError):  # RecursionError: brackets nested past the JSON decoder's depth
            valid = False
        if not valid:
            raise HTTPException(400, f"`where` must be a JSON object of at most {MAX_WHERE} metadata keys "
                                     "(letters, digits, _) to string values")
        data = file.file.read(config.max_upload_bytes + 1)
        if len(data) > config.max_upload_bytes:
            raise HTTPException(413, f"the uploaded file is larger than {config.max_upload_bytes} bytes")
        if not data:
            raise HTTPException(400, "the uploaded file is empty")
        if ctype in AUDIO_TYPES:
            return run_search(state, text=text, audio=data, k=k, modality=modality, fusion=fusion, filter=filter,
                              labels=labels, where=where_map)
        vp = settings.params_for(state.name).validate
        if (problem := image_header_problem(data, vp.max_image_pixels, vp.min_image_side, config.max_aspect)):
            raise HTTPException(400, problem)
        return run_search(state, text=text, image=data, k=k, modality=modality, fusion=fusion, filter=filter,
                          labels=labels, where=where_map)

    async def upload_fields(request: Request) -> None:
        """Refuse form fields the upload route does not know, and a second value of a single-valued field (the
        JSON route refuses unknown keys the same way); the form is parsed once, FastAPI reuses it."""
        try:
            form = await request.form()
        except Exception:  # an unparsable body: the route's own validation answers it with its 4xx
            return
        names = list(form.keys())
        unknown = sorted(set(names) - UPLOAD_FIELDS)
        if unknown:
            raise HTTPException(400, f"unknown form field(s) {[u[:40] for u in unknown[:5]]}; the upload form takes "
                                     f"{sorted(UPLOAD_FIELDS)}")
        repeated = sorted({n for n in names if n != "labels" and len(form.getlist(n)) > 1})
        if repeated:
            raise HTTPException(400, f"form field(s) {repeated} given more than once; only `labels` repeats")

    def thumbnail(state: DatasetState, item_id: str) -> Response:
        collection = state.serving.get("collection") or state.client.index.require_alias(state.client.alias)
        key = (collection, item_id)
        with state.thumbs_lock:
            cached = state.thumbs.get(key, b"")
        data = make_thumbnail(settings, state, collection, item_id) if cached == b"" else cached
        with state.thumbs_lock:
            while len(state.thumbs) >= THUMB_CACHE:
                state.thumbs.pop(next(iter(state.thumbs)))
            state.thumbs[key] = data
        if data is None:
            raise HTTPException(404, "no image item with this id in the serving collection")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    def info(state: DatasetState) -> dict[str, Any]:
        return state.client.info()

    # --- routes: the default dataset, and each dataset by name -------------------------------------------------
    Name = Enum("Name", {n: n for n in names}, type=str)  # type: ignore[misc]  # an enum in the OpenAPI

    def by_name(name: Any) -> DatasetState:
        return _state(states, name.value)

    # a real annotation (not a string): the enum is local to this application
    by_name.__annotations__["name"] = Annotated[Name, PathParam(description="a served dataset")]  # type: ignore

    def default() -> DatasetState:
        return _state(states, names[0])

    for prefix, resolve, tag in (("", default, "default dataset"), ("/datasets/{name}", by_name, "by dataset")):
        op = "named_" if prefix else ""

        @app.get(f"{prefix}/info", dependencies=guarded, tags=[tag], operation_id=f"{op}info",
                 responses=errors(*auth_codes, 404, 422, 503) if prefix else errors(*auth_codes, 404, 503))
        def info_route(state: DatasetState = Depends(resolve)) -> dict[str, Any]:  # noqa: B008
            """What the serving alias points to: collection, model and data version, rows."""
            return info(state)

        @app.post(f"{prefix}/search", response_model=list[Hit], dependencies=guarded, tags=[tag],
                  operation_id=f"{op}search", responses=errors(*auth_codes, 404, 422, 503))
        def search_route(req: SearchRequest, state: DatasetState = Depends(resolve)) -> list[Hit]:  # noqa: B008
            """Nearest items to a text query."""
            return search(state, req)

        @app.post(f"{prefix}/search/upload", response_model=list[Hit], tags=[tag],
                  dependencies=[*guarded, Depends(upload_fields)],
                  operation_id=f"{op}search_upload", responses=errors(*auth_codes, 404, 415, 422, 503))
        def upload_route(file: UploadFile = File(..., description="an image or audio file"),  # noqa: B008
                         text: Annotated[Text | None, Form(min_length=1, max_length=MAX_TEXT,
                                                           description="text to fuse with the file")] = None,
                         k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
                         modality: Annotated[Literal["text", "image", "audio", "video", ""], Form(
                             description="only hits of this modality; empty: any")] = "",
                         fusion: Annotated[Fusion, Form()] = "vector",
                         filter: Annotated[Text, Form(max_length=MAX_REQUEST_FILTER_CHARS)] = "",
                         labels: Annotated[list[Label], Form(max_length=MAX_LABELS)] = [],  # noqa: B006
                         where: Annotated[Text, Form(max_length=4000, description="JSON object of metadata "
                                                     "key/value pairs")] = "",
                         state: DatasetState = Depends(resolve)) -> list[Hit]:  # noqa: B008
            """Nearest items to an uploaded image or audio clip (optionally fused with a text)."""
            return upload(state, file, text, k, modality or None, fusion, filter, labels, where)

        @app.get(f"{prefix}/items/{{item_id}}/thumbnail", dependencies=guarded, tags=[tag],
                 operation_id=f"{op}thumbnail", response_class=Response,
                 responses={200: {"content": {"image/jpeg": {}}, "description": "a JPEG thumbnail"},
                            **errors(*auth_codes, 404, 422, 503)})
        def thumbnail_route(item_id: ItemId, state: DatasetState = Depends(resolve)) -> Response:  # noqa: B008
            """A thumbnail of an image item, made from its clean media (found by the item's id)."""
            return thumbnail(state, item_id)

    @app.get("/datasets", dependencies=guarded, response_model=list[DatasetInfo], responses=errors(*auth_codes))
    def list_datasets() -> list[DatasetInfo]:
        """The served datasets (the first is the default)."""
        return [DatasetInfo(name=n, default=i == 0, ready=states[n].ready if n in states else False)
                for i, n in enumerate(names)]

    @app.get("/health/live", responses=errors(403))
    async def live() -> dict[str, str]:
        """The process answers (never touches the model or Milvus)."""
        return {"status": "ok"}

    @app.get("/health", responses=errors(403), deprecated=True)
    async def health() -> dict[str, str]:
        """Same as /health/live."""
        return {"status": "ok"}

    @app.get("/health/ready", response_model=Readiness,
             responses={503: {"model": Readiness, "description": "some dataset is not ready"}, **errors(403)})
    async def ready() -> JSONResponse:
        """Every dataset's model loaded and a probe query answered (a not-ready dataset is probed again)."""
        from starlette.concurrency import run_in_threadpool

        for state in list(states.values()):
            if not state.ready and time.monotonic() - state.probed_at > 2.0:
                await run_in_threadpool(probe, state)
        ok = bool(states) and all(s.ready for s in states.values())
        body = {"status": "ready" if ok else "not ready",
                "datasets": {n: (states[n].reason if n in states else "not loaded") for n in names}}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", dependencies=guarded, response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                        **errors(*auth_codes)})
    def prometheus() -> Response:
        """Request counts, latency histograms, errors by status, the serving collection and model version."""
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _state(states: dict[str, DatasetState], name: str) -> DatasetState:
    if name not in states:
        raise HTTPException(503, f"dataset {name!r} is not loaded yet")
    return states[name]


def make_thumbnail(settings: Settings, state: DatasetState, collection: str, item_id: str) -> bytes | None:
    """A JPEG of an image item's clean media, or ``None`` when there is no such image item."""
    from mmretrieval.media.files import path_problem
    from mmretrieval.media.image import open_image

    row = state.client.index.get(collection, item_id, ["modality", "metadata"])
    if row is None or row.get("modality") != "image":
        return None
    rel = str((row.get("metadata") or {}).get("clean_media") or "")
    root = settings.layout(state.name).clean
    if not rel or path_problem(rel, root) is not None:
        return None
    try:
        im = open_image(root / rel, settings.params_for(state.name).validate.max_image_pixels)
    except MediaError:
        return None
    im.thumbnail((THUMB_SIDE, THUMB_SIDE))
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=85)
    return out.getvalue()


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def port_problem(host: str, port: int) -> None:
    """Raise :class:`ConfigError` naming ``host:port`` when it cannot be bound (in use, not an address here)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"cannot serve on {host}:{port}: {e.strerror or e} (pick another --port)") from e


def serve(datasets: str | Sequence[str], host: str = "127.0.0.1", port: int = 8000,
          settings: Settings | None = None, *, insecure_no_auth: bool = False) -> None:
    """Run the service with uvicorn. A non-loopback address needs API keys unless ``insecure_no_auth``."""
    import uvicorn

    config = ServiceConfig.from_env()
    if not is_loopback(host):
        if not config.api_keys and not insecure_no_auth:
            raise ConfigError(f"refusing to serve on {host} without API keys: set MMR_API_KEYS or MMR_API_KEYS_FILE "
                              "(or pass --insecure-no-auth to serve anyone who can reach the port)")
        if config.trusted_hosts == LOOPBACK:
            log.warning("MMR_TRUSTED_HOSTS is not set: only requests addressed to localhost/127.0.0.1 are answered")
    port_problem(host, port)  # before the models load, not after
    uvicorn.run(create_app(datasets, settings, config), host=host, port=port, log_level="info",
                log_config=None, timeout_graceful_shutdown=5)  # uvicorn logs through the process's own handlers
