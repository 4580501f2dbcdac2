"""The service's application as assembled, without loading any dataset (no lifespan): its routes, and the guards
around them (Host through Starlette's TrustedHostMiddleware, Origin) answering in the service's error shape."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount

from mmretrieval.core.settings import get_settings
from mmretrieval.serving.http import ServiceConfig, create_app

ROUTES = [
    ("GET", "/"), ("GET", "/datasets"), ("GET", "/datasets/{name}/info"),
    ("GET", "/datasets/{name}/items/{item_id}/thumbnail"), ("GET", "/health"), ("GET", "/health/live"),
    ("GET", "/health/ready"), ("GET", "/info"), ("GET", "/items/{item_id}/thumbnail"), ("GET", "/metrics"),
    ("POST", "/datasets/{name}/search"), ("POST", "/datasets/{name}/search/upload"), ("POST", "/search"),
    ("POST", "/search/upload"),
]
REFUSED_HOST = "the Host header is not a trusted host (set MMR_TRUSTED_HOSTS)"


@pytest.fixture
def http(tmp_path: Path) -> TestClient:
    config = ServiceConfig(trusted_hosts=("127.0.0.1", "::1", "*.example.org"), cors_origins=("https://app.example",))
    return TestClient(create_app(["demo", "other"], get_settings(tmp_path), config), base_url="http://127.0.0.1",
                      raise_server_exceptions=False)


def test_the_route_list_is_pinned(http: TestClient) -> None:
    app = http.app
    routes = sorted((method, r.path) for r in app.routes if isinstance(r, APIRoute) for method in r.methods)
    assert routes == ROUTES
    assert [r.path for r in app.routes if isinstance(r, Mount)] == ["/static"]
    spec = app.openapi()
    assert sorted((m.upper(), p) for p, ops in spec["paths"].items() for m in ops) == [r for r in ROUTES if r[1] != "/"]
    assert spec["components"]["schemas"]["Name"]["enum"] == ["demo", "other"]


@pytest.mark.parametrize("host", ["evil.example", "example.org.evil.net", "localhost:8000", "127.0.0.1:abc"])
def test_an_untrusted_host_is_refused_with_400_and_the_error_body(http: TestClient, host: str) -> None:
    r = http.get("/health/live", headers={"host": host})
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert r.json() == {"detail": REFUSED_HOST, "request_id": r.headers["x-request-id"], "errors": []}


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "[::1]:8000", "a.example.org", "A.Example.ORG:443"])
def test_a_trusted_host_is_answered(http: TestClient, host: str) -> None:
    r = http.get("/health/live", headers={"host": host})
    assert r.status_code == 200 and r.json() == {"status": "ok"} and r.headers["x-request-id"]


def test_a_well_formed_request_id_is_kept_and_refusals_are_counted_as_unmatched(http: TestClient) -> None:
    r = http.get("/health/live", headers={"host": "evil.example", "x-request-id": "trace-0123456789"})
    assert r.headers["x-request-id"] == r.json()["request_id"] == "trace-0123456789"
    metrics = http.get("/metrics").text
    assert 'mmr_http_errors_total{route="unmatched",status="400"} 1.0' in metrics


@pytest.mark.parametrize(("origin", "status"), [
    ("http://127.0.0.1", 200), ("https://app.example", 200), ("https://app.example/", 200), ("null", 403),
    ("http://evil.net", 403), ("https://127.0.0.1.evil.net", 403),
])
def test_only_the_same_origin_and_the_allowed_ones_are_answered(http: TestClient, origin: str, status: int) -> None:
    r = http.get("/health/live", headers={"origin": origin})
    assert r.status_code == status
    if status == 403:
        assert "cross-origin requests are refused" in r.json()["detail"]


def test_a_body_over_the_limit_is_refused_before_the_application(http: TestClient) -> None:
    r = http.post("/search", content=b"{}", headers={"content-length": "70000", "content-type": "application/json"})
    assert r.status_code == 413 and r.headers["connection"] == "close"
    assert r.json()["detail"] == "the request body has 70000 bytes; the limit is 65536"
    assert http.post("/search", content=b"{}", headers={"content-length": "x"}).status_code == 400


SECURITY = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY"}


@pytest.mark.parametrize("path,host", [("/health/live", "127.0.0.1"), ("/", "127.0.0.1"),
                                       ("/static/app.js", "127.0.0.1"), ("/openapi.json", "127.0.0.1"),
                                       ("/nothing", "127.0.0.1"), ("/health/live", "evil.example")])
def test_every_answer_carries_the_security_headers_and_a_strict_csp(http: TestClient, path: str, host: str) -> None:
    r = http.get(path, headers={"host": host})
    assert {k: r.headers.get(k) for k in SECURITY} == SECURITY, (r.status_code, dict(r.headers))
    csp = dict(part.strip().split(" ", 1) for part in r.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'self'" and csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'" and csp["object-src"] == "'none'" and csp["base-uri"] == "'none'"
    assert "unsafe-inline" not in r.headers["content-security-policy"]


def test_the_page_has_no_inline_script_or_style_and_loads_only_its_own_files(http: TestClient) -> None:
    from tests.helpers.pages import assets
    from tests.helpers.payloads import elements

    page = http.get("/").text
    attributes = [name for _, attrs in elements(page) for name in attrs]
    assert "<style" not in page and "style" not in attributes and not [a for a in attributes if a.startswith("on")]
    found = assets(page)
    assert [a for a in found.loads if a != "<script>"] == ["static/app.css", "static/app.js"]
    assert page.count("<script") == 1 and 'src="static/app.js"' in page


def test_api_docs_are_off_by_default_and_the_openapi_description_stays(http: TestClient, tmp_path: Path) -> None:
    assert http.get("/docs").status_code == 404 and http.get("/redoc").status_code == 404
    assert http.get("/openapi.json").status_code == 200
    on = TestClient(create_app("demo", get_settings(tmp_path), ServiceConfig(api_docs=True)),
                    base_url="http://127.0.0.1")
    for path in ("/docs", "/redoc"):
        r = on.get(path)
        assert r.status_code == 200 and "cdn.jsdelivr.net" in r.text
        assert "cdn.jsdelivr.net" in r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "cdn.jsdelivr.net" not in on.get("/").headers["content-security-policy"]


@pytest.mark.parametrize("query", ["api_key=abcdefghijklmnopqrstuvwxyz", "X-API-Key=secret-value-0123456789",
                                   "x%2Dapi%2Dkey=secret-value-0123456789", "ApiKey=k", "access_token=t",
                                   "text=cat&KEY=k%2Fv", "TOKEN"])
def test_a_key_in_the_query_string_is_refused_with_a_pointer_to_the_header(http: TestClient, query: str) -> None:
    r = http.get(f"/info?{query}")
    assert r.status_code == 400 and "X-API-Key header" in r.json()["detail"] and r.json()["request_id"]


def test_every_operation_documents_503_with_retry_after(http: TestClient) -> None:
    spec = http.app.openapi()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert "503" in op["responses"], (method, path)
            if path != "/health/ready":
                assert "Retry-After" in op["responses"]["503"]["headers"], (method, path)
