"""The service's pure guards: configuration from the environment, redaction, filter complexity, image headers.
(Hosts and origins through the middleware: test_service_app.py.)"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mmretrieval.backends.index import safe_uri
from mmretrieval.core.errors import ConfigError
from mmretrieval.core.settings import get_settings
from mmretrieval.serving.http import (
    LOOPBACK,
    Redactor,
    ServiceConfig,
    filter_problem,
    image_header_problem,
    is_loopback,
    port_problem,
)

KEY = "k" * 20


VARIABLES = ("MMR_API_KEYS", "MMR_API_KEYS_FILE", "MMR_TRUSTED_HOSTS", "MMR_CORS_ORIGINS",
             "MMR_MAX_CONCURRENT_SEARCHES")


def from_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> ServiceConfig:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return ServiceConfig.from_env()


def test_configuration_comes_from_the_environment_and_a_keys_file(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# service keys\n" + "f" * 24 + "\n\n", encoding="utf-8")
    config = from_env(monkeypatch, MMR_API_KEYS=f"{KEY}, {'g' * 16}", MMR_API_KEYS_FILE=str(keys),
                      MMR_TRUSTED_HOSTS="search.example.org,*.internal", MMR_CORS_ORIGINS="https://app.example/",
                      MMR_MAX_CONCURRENT_SEARCHES="0")
    assert config.api_keys == (KEY, "g" * 16, "f" * 24)
    assert config.trusted_hosts == ("search.example.org", "*.internal")
    assert config.cors_origins == ("https://app.example",)
    assert config.max_concurrent_searches == 1
    default = from_env(monkeypatch, MMR_TRUSTED_HOSTS="")  # empty: unset
    assert default.api_keys == () and default.trusted_hosts == LOOPBACK and default.cors_origins == ()
    assert ServiceConfig(api_keys=(KEY,)).api_keys == (KEY,)  # keyword arguments win over the environment


@pytest.mark.parametrize(("env", "message"), [
    ({"MMR_API_KEYS": "short"}, "MMR_API_KEYS: API keys must have at least 16 characters"),
    ({"MMR_API_KEYS_FILE": "/nonexistent/keys"}, "MMR_API_KEYS_FILE='/nonexistent/keys' cannot be read"),
    ({"MMR_TRUSTED_HOSTS": "a.org,api.*.org"}, "MMR_TRUSTED_HOSTS: 'api.*.org' is neither a host name"),
    ({"MMR_MAX_CONCURRENT_SEARCHES": "many"}, "MMR_MAX_CONCURRENT_SEARCHES='many': Input should be a valid integer"),
])
def test_a_bad_variable_is_a_config_error_naming_it_and_its_value(monkeypatch: pytest.MonkeyPatch,
                                                                   env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_env(monkeypatch, **env)
    assert message in str(e.value)
    assert "short" not in str(e.value)  # a key is a secret, even a bad one


def test_secrets_and_absolute_paths_are_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMR_MILVUS_URI", "http://svc:Hunter2-secret@milvus.internal:19530")
    monkeypatch.setenv("MMR_MILVUS_TOKEN", "svc:Token-secret")
    settings = get_settings(tmp_path)
    redact = Redactor.for_settings(settings, ServiceConfig(api_keys=(KEY,)))
    text = redact(f"cannot open {settings.milvus_uri} with svc:Token-secret, key {KEY}, file "
                  f"{tmp_path}/var/milvus.db and '/usr/lib/x.so': lone \ud800")
    assert "Hunter2-secret" not in text and "Token-secret" not in text and KEY not in text
    assert str(tmp_path) not in text and "/usr/lib" not in text
    assert "…/var/milvus.db" in text and "…/x.so" in text and "milvus.internal:19530" in text
    assert redact("GET /health/live and /datasets/demo/search") == "GET /health/live and /datasets/demo/search"
    text.encode("utf-8")  # always valid UTF-8
    assert safe_uri("http://svc:pw@host:19530") == "http://host:19530"
    assert safe_uri(str(tmp_path / "var" / "milvus.db")) == "milvus.db"


@pytest.mark.parametrize(("expr", "problem"), [
    ('label == "7"', None),
    ('label in ["1", "2"] and modality == "image"', None),
    (" or ".join(f'label == "{i}"' for i in range(40)), "comparisons and operators"),
    ("(" * 20 + 'label == "a"' + ")" * 20, "nests 20 deep"),
    ("label in [" + ",".join(str(i) for i in range(300)) + "]", "values"),
])
def test_filter_complexity_is_counted_before_milvus_parses_it(expr: str, problem: str | None) -> None:
    found = filter_problem(expr)
    assert (found is None) if problem is None else (found is not None and problem in found)


def png(width: int, height: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(("size", "problem"), [
    ((64, 48), None), ((50000, 1), "at least 8"), ((4000, 100), "20 times"), ((2000, 1000), "pixels"),
])
def test_the_image_header_is_checked_without_decoding(size: tuple[int, int], problem: str | None) -> None:
    found = image_header_problem(png(*size), 40_000_000 if size != (2000, 1000) else 1_000_000, 8, 20.0)
    assert (found is None) if problem is None else (found is not None and problem in found)
    assert image_header_problem(b"not an image", 1000, 8, 20.0) is None  # the decoder explains


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")


def test_serve_refuses_a_port_in_use_before_loading_anything() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            port_problem("127.0.0.1", port)
    port_problem("127.0.0.1", port)  # free again


def test_keys_are_redacted_from_query_strings_in_any_encoding() -> None:
    from urllib.parse import quote, quote_plus

    from mmretrieval.serving.http.redaction import Redactor

    key = "live-key/0123+456789 abc"
    redact = Redactor([key])
    lower = "".join(f"%{b:02x}" for b in key.encode())  # every byte escaped, lower-case hex
    for target in (f"/search?api_key={quote(key, safe='')}", f"/search?text=a&X%2DAPI%2DKey={quote_plus(key)}",
                   f"/search?q={lower}", f"/search?q={quote(key, safe='').lower()}&k=3",
                   f"/items/{quote(key, safe='')}/thumbnail", "/search?APIKEY=other-secret&k=1",
                   f"/search?token={key}"):
        line = f'127.0.0.1:5555 - "GET {target} HTTP/1.1" 400'
        out = redact(line)
        assert key not in out and quote(key, safe="") not in out and lower not in out, out
        assert "other-secret" not in out and out.endswith('HTTP/1.1" 400'), out
    assert redact("GET /search?text=a%20cat&k=3") == "GET /search?text=a%20cat&k=3"  # nothing secret: unchanged


def test_in_flight_requests_beyond_the_limit_get_503_with_retry_after() -> None:
    import asyncio

    from mmretrieval.serving.http.guards import InFlightLimit, RequestGuard
    from mmretrieval.serving.http.metrics import Metrics
    from mmretrieval.serving.http.redaction import Redactor

    release = asyncio.Event()

    async def slow(scope: dict, receive: object, send: object) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    app = RequestGuard(InFlightLimit(slow, limit=2), metrics=Metrics(), redact=Redactor([]))

    async def one(path: str) -> tuple[int, dict[bytes, bytes]]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
        await app(scope, None, send)  # type: ignore[arg-type]
        return sent[0]["status"], dict(sent[0]["headers"])

    async def main() -> list[tuple[int, dict[bytes, bytes]]]:
        held = [asyncio.create_task(one("/search")) for _ in range(2)]
        await asyncio.sleep(0.05)
        refused = await one("/search")
        release.clear()
        health = asyncio.create_task(one("/health/live"))
        await asyncio.sleep(0.05)
        release.set()
        return [refused, *[await t for t in held], await health]

    results = asyncio.run(main())
    assert results[0][0] == 503 and results[0][1][b"retry-after"] == b"1"
    assert [status for status, _ in results[1:]] == [200, 200, 200]
