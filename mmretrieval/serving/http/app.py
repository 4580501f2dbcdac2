"""The application: :func:`create_app` assembles the service's parts; :func:`serve` runs it with uvicorn."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from mmretrieval.core.errors import ConfigError
from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.serving.http.config import LOOPBACK, ServiceConfig
from mmretrieval.serving.http.dependencies import Access, default_dataset, named_dataset
from mmretrieval.serving.http.errors import HANDLERS
from mmretrieval.serving.http.guards import (
    BodyLimit,
    InFlightLimit,
    NoKeyInQuery,
    RequestGuard,
    SameOrigin,
    TrustedHosts,
)
from mmretrieval.serving.http.policy import SecurityHeaders
from mmretrieval.serving.http.routes import monitoring, page
from mmretrieval.serving.http.routes.datasets import dataset_routes
from mmretrieval.serving.http.routes.datasets import router as listing
from mmretrieval.serving.http.schemas import NO_GOOD_MATCH, errors
from mmretrieval.serving.http.state import Service

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load every dataset (model, collection, a probe query) when the server starts; close them when it stops."""
    service: Service = app.state.service
    await service.start()
    try:
        yield
    finally:
        service.stop()


def create_app(datasets: str | Sequence[str], settings: Settings | None = None,
               config: ServiceConfig | None = None) -> FastAPI:
    """The application for ``datasets`` (the first is the default). Nothing is loaded until its lifespan starts.
    ``config`` defaults to :meth:`ServiceConfig.from_env`; :class:`ConfigError` without a dataset."""
    names = [datasets] if isinstance(datasets, str) else list(dict.fromkeys(datasets))
    if not names:
        raise ConfigError("give at least one dataset to serve")
    service = Service(names, settings or get_settings(), config or ServiceConfig.from_env())
    config, access = service.config, Access.of(service.config)
    docs = {} if config.api_docs else {"docs_url": None, "redoc_url": None}  # /openapi.json is always served
    app = FastAPI(title="mmretrieval", version="0.2.0", lifespan=lifespan, **docs, description=(
        f"Multimodal search over the serving alias of dataset(s) {', '.join(names)} (default {names[0]!r}). "
        "Errors carry a `detail` reason and a `request_id`."))
    app.state.service, app.state.config, app.state.states = service, config, service.states
    for exc, handler in HANDLERS.items():
        app.add_exception_handler(exc, handler)
    guarded = {"dependencies": access.dependencies, "responses": errors(*access.codes)}
    app.include_router(dataset_routes(default_dataset), tags=["default dataset"], **guarded)
    app.include_router(dataset_routes(named_dataset(names), "named_"), prefix="/datasets/{name}",
                       tags=["by dataset"], dependencies=access.dependencies, responses=errors(*access.codes, 422))
    app.include_router(listing, **guarded)
    app.include_router(monitoring.router)
    app.include_router(monitoring.metrics_router, **guarded)
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    if config.cors_origins:  # inside the guards, which already refused origins that are not allowed
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["X-API-Key", "Content-Type", "X-Request-ID"],
                           expose_headers=[NO_GOOD_MATCH], max_age=600)
    app.add_middleware(BodyLimit, json_bytes=config.max_json_bytes, upload_bytes=config.max_upload_bytes)
    app.add_middleware(InFlightLimit, limit=config.max_in_flight)
    app.add_middleware(NoKeyInQuery)
    app.add_middleware(SameOrigin, allowed_origins=config.cors_origins)
    app.add_middleware(TrustedHosts, allowed_hosts=config.trusted_hosts)
    app.add_middleware(RequestGuard, metrics=service.metrics, redact=service.redact)
    app.add_middleware(SecurityHeaders, docs=config.api_docs)  # the outermost: every answer carries them
    return app


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine's loopback."""
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
                log_config=None, timeout_graceful_shutdown=5,  # uvicorn logs through the process's own handlers
                **uvicorn_limits(config))


def uvicorn_limits(config: ServiceConfig) -> dict[str, object]:
    """uvicorn's keyword arguments for ``config``'s connection limits: its own keep-alive timeout, and the h11
    protocol with the header and body deadlines and the connection cap it lacks
    (:func:`~mmretrieval.serving.http.protocol.guarded_protocol`)."""
    from mmretrieval.serving.http.protocol import guarded_protocol

    return {"http": guarded_protocol(config.header_timeout, config.body_timeout, config.max_connections),
            "timeout_keep_alive": config.keep_alive_timeout}
