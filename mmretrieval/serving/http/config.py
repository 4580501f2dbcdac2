"""The service's configuration: who may call it and what it accepts, read from ``MMR_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mmretrieval.core.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
PREFIX = "MMR_"
KEY_HINT = "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"


def _comma_separated(value: Any) -> Any:
    """``"a, b,,c"`` (an environment variable) -> ``("a", "b", "c")``; anything else is left to the field's type."""
    return tuple(item.strip() for item in value.split(",") if item.strip()) if isinstance(value, str) else value


Names = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_separated)]


class ServiceConfig(BaseSettings):
    """What the service accepts and from whom (pydantic-settings).

    Each field reads the variable ``MMR_<FIELD>`` (``MMR_API_KEYS``, ``MMR_API_KEYS_FILE``, ``MMR_TRUSTED_HOSTS``,
    ``MMR_CORS_ORIGINS``, ``MMR_MAX_CONCURRENT_SEARCHES``, ``MMR_HEADER_TIMEOUT``, ``MMR_API_DOCS``, ...); keyword
    arguments win over the environment, an empty variable counts as unset, lists are comma-separated. A bad value
    raises pydantic's ``ValidationError``; :meth:`from_env` raises :class:`ConfigError` naming the variable instead.
    """

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, extra="forbid", frozen=True)

    api_keys_file: Path | None = None  # one key per line (blank lines and `#` comments skipped), added to api_keys
    api_keys: Names = Field((), validate_default=True)  # none: anyone who reaches the port may search
    trusted_hosts: Names = LOOPBACK  # Host header names answered (``*.example.org``, ``*``); none set: loopback
    cors_origins: Names = ()  # origins allowed cross-origin requests; none: cross-origin requests are refused
    max_json_bytes: int = 64 * 1024  # a JSON request body
    max_upload_bytes: int = 10 * 1024 * 1024  # the uploaded file; the multipart body may add 64 KiB of form fields
    max_concurrent_searches: int = 4  # searches (decode + model + Milvus) at once; below 1 counts as 1
    queue_seconds: float = 30.0  # a search waits this long for a slot, then 503 (with Retry-After)
    max_aspect: float = 20.0  # longest / shortest image side (a 50000x1 "thin" image is refused before decoding)
    max_concurrent_decodes: int = 2  # uploaded images decoded at once (the rest wait for queue_seconds, then 503)
    header_timeout: float = Field(10.0, gt=0)  # seconds for a request's headers to arrive (408 and closed after)
    body_timeout: float = Field(60.0, gt=0)  # seconds for its body to arrive once the headers have (408 after)
    keep_alive_timeout: float = Field(5.0, gt=0)  # an idle keep-alive connection is closed after this (uvicorn's)
    max_connections: int = Field(256, ge=1)  # open connections; a connection beyond gets 503 with Retry-After
    max_in_flight: int = Field(64, ge=1)  # requests being handled at once (health checks aside); 503 beyond
    api_docs: bool = False  # serve /docs (Swagger UI) and /redoc, which load their JavaScript from a CDN

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, keys: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        path = info.data.get("api_keys_file")
        if path is not None:
            try:
                lines = Path(path).read_text(encoding="utf-8").splitlines()
            except OSError as e:
                raise ValueError(f"the keys file MMR_API_KEYS_FILE={str(path)!r} cannot be read: {e.strerror}") from e
            keys += tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
        if short := [k for k in keys if len(k) < 16]:  # the key itself is a secret: never in a message
            raise ValueError(f"API keys must have at least 16 characters ({KEY_HINT}); {len(short)} key(s) of "
                             f"{', '.join(str(len(k)) for k in short)} characters given")
        return keys

    @field_validator("trusted_hosts")
    @classmethod
    def _hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        for host in hosts:  # the patterns Starlette's TrustedHostMiddleware takes
            if "*" in host[1:] or (host.startswith("*") and host != "*" and not host.startswith("*.")):
                raise ValueError(f"{host!r} is neither a host name nor `*` nor a `*.example.org` pattern")
        return hosts or LOOPBACK

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(origin.rstrip("/") for origin in origins)

    @field_validator("max_concurrent_searches", "max_concurrent_decodes")
    @classmethod
    def _at_least_one(cls, searches: int) -> int:
        return max(1, searches)

    @classmethod
    def from_env(cls) -> ServiceConfig:
        """The configuration from the process environment; :class:`ConfigError` naming each bad variable."""
        try:
            return cls()
        except ValidationError as e:
            raise ConfigError("; ".join(_problem(error) for error in e.errors())) from None


def _problem(error: Any) -> str:
    """One pydantic error as ``MMR_VARIABLE: why``, with the bad value unless it may be a secret."""
    variable = PREFIX + "".join(str(part) for part in error["loc"][:1]).upper()
    why = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "value_error" or variable == PREFIX + "API_KEYS":  # the validator named the value
        return f"{variable}: {why}"
    return f"{variable}={str(error['input'])[:100]!r}: {why}"
