"""FastAPI dependencies: the application's :class:`Service`, the dataset a route serves, and the API key check.

(No ``from __future__ import annotations`` here: FastAPI reads these signatures at runtime, and the dataset-name
enum is built per application.)
"""

import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.security import APIKeyHeader

from mmretrieval.serving.http.config import ServiceConfig
from mmretrieval.serving.http.state import DatasetState, Service


def get_service(request: Request) -> Service:
    """The :class:`Service` that :func:`~mmretrieval.serving.http.app.create_app` put in ``app.state.service``."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def default_dataset(service: ServiceDep) -> DatasetState:
    """The first served dataset: the one the routes without ``/datasets/{name}`` serve (503 until loaded)."""
    return service.state(service.names[0])


def named_dataset(names: Sequence[str]) -> Callable[..., DatasetState]:
    """The dependency of the routes under ``/datasets/{name}``: ``name`` must be one of ``names`` (an enum in the
    OpenAPI, 422 otherwise); the dataset's state, 503 until it is loaded."""
    Name = Enum("Name", {n: n for n in names}, type=str)  # type: ignore[misc]

    def by_name(name: Annotated[Name, PathParam(description="a served dataset")],  # type: ignore[valid-type]
                service: ServiceDep) -> DatasetState:
        return service.state(name.value)

    return by_name


api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="one of the keys in MMR_API_KEYS")


def authorised(service: ServiceDep, key: Annotated[str | None, Depends(api_key)]) -> None:
    """401 without an ``X-API-Key`` header, 403 when it is none of the configured keys (each one compared in
    constant time)."""
    if key is None:
        raise HTTPException(401, "an API key is required (header X-API-Key)", headers={"WWW-Authenticate": "ApiKey"})
    given = key.encode("utf-8", "surrogateescape")
    if not any([hmac.compare_digest(given, k.encode()) for k in service.config.api_keys]):  # every key compared
        raise HTTPException(403, "the API key is not valid")


@dataclass(frozen=True)
class Access:
    """Who may call the guarded routes (everything but health and the page): their dependencies and the statuses
    they document (401 and 403 with API keys; 403, a refused origin, always)."""

    dependencies: list[Any]
    codes: tuple[int, ...]

    @classmethod
    def of(cls, config: ServiceConfig) -> "Access":
        return cls([Depends(authorised)], (401, 403)) if config.api_keys else cls([], (403,))
