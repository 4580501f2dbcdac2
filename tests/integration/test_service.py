"""The HTTP service as a downstream team meets it: limits before work, hostile inputs, errors, access control,
readiness, metrics, several datasets, thumbnails, and its OpenAPI checked by schemathesis (real Milvus Lite, real
model; in-process ASGI calls). The live-server tests (uvicorn on loopback, a real browser) are in test_service_live.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mmretrieval.core.settings import Settings
from mmretrieval.serving.http import ServiceConfig, create_app
from tests.helpers.files import png_declaring
from tests.helpers.servers import free_port
from tests.helpers.workspace import BIN

pytestmark = pytest.mark.integration
KEY = "test-key-0123456789abcdef"
SECRET = "S3cret-Pa55word-xyz"


def png(width: int, height: int, color: tuple[int, int, int] = (220, 30, 30)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def wav() -> bytes:
    import numpy as np
    import soundfile as sf

    out = io.BytesIO()
    sf.write(out, (0.3 * np.sin(np.linspace(0, 2000, 16000))).astype("float32"), 16000, format="WAV")
    return out.getvalue()


def hostile_inputs() -> list[tuple[str, str, dict[str, Any], set[int]]]:
    """(name, path, request arguments, acceptable statuses): the generated hostile-input set."""
    big_or = " or ".join(f'label == "{i}"' for i in range(200_000))  # 3.7 MB of filter
    some_or = " or ".join(f'label == "{i}"' for i in range(60))  # short enough, too complex
    deep = "(" * 40 + 'label == "a"' + ")" * 40
    cases: list[tuple[str, str, dict[str, Any], set[int]]] = [
        ("bomb 40000x40000 header", "/search/upload", {"files": {"file": ("b.png", png_declaring(40000, 40000),
                                                                          "image/png")}}, {400}),
        ("bomb 12000x12000 header", "/search/upload", {"files": {"file": ("b.png", png_declaring(12000, 12000),
                                                                          "image/png")}}, {400}),
        ("thin 50000x1", "/search/upload", {"files": {"file": ("t.png", png(50000, 1), "image/png")}}, {400}),
        ("thin 50000x8", "/search/upload", {"files": {"file": ("t.png", png(50000, 8), "image/png")}}, {400}),
        ("thin 1x50000 header", "/search/upload", {"files": {"file": ("t.png", png_declaring(1, 50000),
                                                                      "image/png")}}, {400}),
        ("surrogate in text", "/search", {"content": b'{"text": "cat \\ud800"}'}, {422}),
        ("surrogate in filter", "/search", {"content": b'{"text": "cat", "filter": "label == \\"\\udfff\\""}'}, {422}),
        ("surrogate in labels", "/search", {"content": b'{"text": "cat", "labels": ["\\ud83d"]}'}, {422}),
        ("surrogate in a key", "/search", {"content": b'{"text": "cat", "\\ud800": 1}'}, {422}),
        ("invalid UTF-8", "/search", {"content": b'{"text": "cat \xff\xfe"}'}, {400, 422}),
        ("huge filter (3.7 MB)", "/search", {"json": {"text": "cat", "filter": big_or}}, {413}),
        ("complex filter", "/search", {"json": {"text": "cat", "filter": some_or}}, {400}),
        ("k as a boolean", "/search", {"json": {"text": "cat", "k": True}}, {422}),
        ("rerank as a boolean", "/search", {"json": {"text": "cat", "rerank": False}}, {422}),
        ("rerank below k", "/search", {"json": {"text": "cat", "k": 5, "rerank": 2}}, {400}),
        ("deep filter", "/search", {"json": {"text": "cat", "filter": deep}}, {400}),
        ("filter syntax error", "/search", {"json": {"text": "cat", "filter": "label === 3"}}, {400}),
        ("unknown filter field", "/search", {"json": {"text": "cat", "filter": "zzz == 3"}}, {400}),
        ("20 MB JSON body", "/search", {"json": {"text": "cat", "pad": "x" * 20_000_000}}, {413}),
        ("text too long", "/search", {"json": {"text": "x" * 100_000}}, {413, 422}),
        ("empty modality", "/search", {"json": {"text": "cat", "modality": ""}}, {422}),
        ("text as image/png", "/search/upload", {"files": {"file": ("a.png", b"hello, not an image",
                                                                    "image/png")}}, {400}),
        ("png as audio/wav", "/search/upload", {"files": {"file": ("a.wav", png(40, 40), "audio/wav")}}, {400}),
        ("wav as image/png", "/search/upload", {"files": {"file": ("a.png", wav(), "image/png")}}, {400}),
        ("png as text/plain", "/search/upload", {"files": {"file": ("a.txt", png(40, 40), "text/plain")}}, {415}),
        ("empty upload", "/search/upload", {"files": {"file": ("a.png", b"", "image/png")}}, {400}),
        ("11 MB upload", "/search/upload", {"files": {"file": ("a.png", b"\0" * 11_000_000, "image/png")}}, {413}),
        ("bad where JSON", "/search/upload", {"files": {"file": ("a.png", png(40, 40), "image/png")},
                                              "data": {"where": "{not json"}}, {400}),
        ("unknown upload field", "/search/upload", {"files": {"file": ("a.png", png(40, 40), "image/png")},
                                                    "data": {"kk": "3"}}, {400}),  # as /search refuses unknown keys
        ("rerank on upload", "/search/upload", {"files": {"file": ("a.png", png(40, 40), "image/png")},
                                                "data": {"rerank": "5"}}, {400}),  # re-ranking is for text queries
        ("where nested 2000 deep", "/search/upload", {"files": {"file": ("a.png", png(40, 40), "image/png")},
                                                      "data": {"where": "[" * 1990 + "]" * 1990}}, {400}),
        ("filter escaping its parentheses", "/search", {"json": {"text": "cat", "modality": "image", "filter":
                                                                 'label == "x") or (modality == "video"'}}, {400}),
        ("k given twice", "/search/upload", {"files": {"file": ("a.png", png(40, 40), "image/png")},
                                             "data": {"k": ["1", "50"]}}, {400}),
        ("two files", "/search/upload", {"files": [("file", ("a.png", png(40, 40), "image/png")),
                                                   ("file", ("b.png", png(40, 40), "image/png"))]}, {400}),
    ]
    return cases


@pytest.fixture(scope="module")
def app_and_http(published_tiny: Settings) -> Iterator[tuple[Any, TestClient]]:
    """One application serving ``tiny`` (default) and ``ghost`` (never published), with an API key."""
    config = ServiceConfig(api_keys=(KEY,), trusted_hosts=("127.0.0.1", "testserver"))
    app = create_app(["tiny", "ghost"], published_tiny, config)
    with TestClient(app, base_url="http://127.0.0.1", headers={"X-API-Key": KEY},
                    raise_server_exceptions=False) as http:
        yield app, http


@pytest.fixture
def http(app_and_http: tuple[Any, TestClient]) -> TestClient:
    return app_and_http[1]


@pytest.mark.parametrize("case", hostile_inputs(), ids=lambda c: c[0])
def test_each_hostile_input_is_refused_with_a_4xx_and_a_reason(http: TestClient,
                                                              case: tuple[str, str, dict[str, Any], set[int]]) -> None:
    name, path, kwargs, statuses = case
    if "content" in kwargs:
        kwargs = {**kwargs, "headers": {"content-type": "application/json"}}
    r = http.post(path, **kwargs)
    assert r.status_code in statuses, (name, r.status_code, r.text[:300])
    body = r.json()
    assert body["detail"] and body["request_id"] == r.headers["x-request-id"]


def test_an_upload_is_cut_off_while_streaming_when_it_sends_no_content_length(http: TestClient) -> None:
    boundary = "b0undary"

    def body() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
               "Content-Type: image/png\r\n\r\n").encode()
        for _ in range(12):
            yield b"\0" * 1_000_000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = http.post("/search/upload", content=body(),
                  headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and "larger than" in r.json()["detail"]


def test_a_good_upload_with_a_parametrised_content_type_is_accepted(http: TestClient) -> None:
    r = http.post("/search/upload", files={"file": ("q.png", png(40, 36), "image/png; x=1")},
                  data={"k": "2", "labels": ["red", "blue"]})
    assert r.status_code == 200, r.text
    assert [h["label"] for h in r.json()] == ["red", "red"]


def test_label_and_metadata_filters_narrow_the_hits(http: TestClient) -> None:
    hits = http.post("/search", json={"text": "a red square", "k": 8, "labels": ["blue"]}).json()
    assert hits and {h["label"] for h in hits} == {"blue"}
    one = http.post("/search", json={"text": "a red square", "where": {"clean_media": hits[0]["metadata"][
        "clean_media"]}}).json()
    assert [h["id"] for h in one] == [hits[0]["id"]]


def test_an_unexpected_error_is_a_500_with_a_request_id_that_the_log_carries(
        app_and_http: tuple[Any, TestClient], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    app, http = app_and_http
    client = app.state.states["tiny"].client

    def broken(**_: Any) -> None:
        raise RuntimeError(f"boom at {client.settings.home}/var/thing with {SECRET}")

    monkeypatch.setattr(client, "search", broken)
    monkeypatch.setattr(app.state, "secret_probe", None, raising=False)
    with caplog.at_level(logging.INFO, logger="mmretrieval"):
        r = http.post("/search", json={"text": "cat"})
    assert r.status_code == 500
    rid = r.json()["request_id"]
    assert rid in r.json()["detail"] and rid in caplog.text and "RuntimeError" in caplog.text
    assert str(client.settings.home) not in caplog.text + r.text


def test_secrets_and_absolute_paths_never_appear_in_responses_or_logs(published_tiny: Settings,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A Milvus URI with a password that cannot be reached, and a dataset without a collection on the Lite file."""
    secret_uri = f"http://root:{SECRET}@127.0.0.1:9"  # the discard port: nothing answers
    secret = published_tiny.model_copy(update={"milvus_uri": secret_uri, "milvus_token": f"root:{SECRET}"})
    seen: list[str] = []
    with caplog.at_level(logging.DEBUG):
        for settings, names in ((secret, ["tiny"]), (published_tiny, ["ghost"])):
            app = create_app(names, settings, ServiceConfig(api_keys=(KEY,)))
            with TestClient(app, base_url="http://127.0.0.1", headers={"X-API-Key": KEY},
                            raise_server_exceptions=False) as http:
                for method, path, kwargs in (("GET", "/health/ready", {}), ("GET", "/info", {}),
                                             ("POST", "/search", {"json": {"text": "cat"}}),
                                             ("GET", "/items/x/thumbnail", {}), ("GET", "/metrics", {})):
                    r = http.request(method, path, **kwargs)
                    assert r.status_code < 500 or r.status_code == 503, (path, r.status_code, r.text)
                    seen.append(r.text)
                assert http.get("/health/ready").status_code == 503
    # the service's own log lines as they are; every other library's as `mmr serve` logs them (through the
    # RedactingFilter it installs on the root handlers: Milvus Lite names its file when it starts)
    from mmretrieval.serving.http import RedactingFilter, Redactor

    redacting = RedactingFilter(Redactor.for_settings(secret, ServiceConfig(api_keys=(KEY,))))
    own = [r.getMessage() for r in caplog.records if r.name.startswith("mmretrieval")]
    served = [r.getMessage() for r in caplog.records if redacting.filter(r)]
    text = "\n".join(seen + own + served)
    assert "not ready" in text and own
    for needle in (SECRET, KEY, str(published_tiny.home), str(published_tiny.home.parent)):
        assert needle not in text


def test_api_keys_are_required_where_configured(app_and_http: tuple[Any, TestClient]) -> None:
    app, _ = app_and_http
    anonymous = TestClient(app, base_url="http://127.0.0.1")  # the same running application, no key
    r = anonymous.post("/search", json={"text": "cat"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "ApiKey"
    assert anonymous.post("/search", json={"text": "cat"}, headers={"X-API-Key": KEY[:-1] + "X"}).status_code == 403
    assert anonymous.get("/metrics").status_code == 401
    assert anonymous.post("/search", json={"text": "cat"}, headers={"X-API-Key": KEY}).status_code == 200
    assert anonymous.get("/health/live").status_code == 200  # health and the page stay open
    assert anonymous.get("/").status_code == 200 and anonymous.get("/static/app.js").status_code == 200


def test_untrusted_hosts_and_foreign_origins_are_refused(http: TestClient) -> None:
    assert http.get("/info", headers={"host": "evil.example"}).status_code == 400
    foreign = http.post("/search/upload", files={"file": ("q.png", png(40, 40), "image/png")},
                        headers={"origin": "http://evil.example"})
    assert foreign.status_code == 403 and "cross-origin" in foreign.json()["detail"]
    assert "access-control-allow-origin" not in foreign.headers  # CORS is off by default
    same = http.post("/search", json={"text": "cat", "k": 1}, headers={"origin": "http://127.0.0.1"})
    assert same.status_code == 200


def test_cors_answers_only_the_configured_origin(published_tiny: Settings) -> None:
    app = create_app("tiny", published_tiny, ServiceConfig(cors_origins=("https://app.example",)))
    http = TestClient(app, base_url="http://127.0.0.1")  # no lifespan: the preflight needs no model
    ok = http.options("/search", headers={"origin": "https://app.example", "access-control-request-method": "POST"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
    bad = http.options("/search", headers={"origin": "https://evil.example", "access-control-request-method": "POST"})
    assert bad.status_code == 403


def test_readiness_names_the_dataset_that_is_not_ready_and_each_dataset_has_its_routes(http: TestClient) -> None:
    ready = http.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["datasets"]["tiny"] == "ready" and "mmr_ghost" in ready.json()["datasets"]["ghost"]
    assert http.get("/datasets").json() == [{"name": "tiny", "default": True, "ready": True},
                                            {"name": "ghost", "default": False, "ready": False}]
    named = http.post("/datasets/tiny/search", json={"text": "a blue square", "k": 3}).json()
    assert named == http.post("/search", json={"text": "a blue square", "k": 3}).json()
    assert http.post("/datasets/ghost/search", json={"text": "cat"}).status_code == 404
    assert http.post("/datasets/nosuch/search", json={"text": "cat"}).status_code == 422
    assert http.get("/datasets/tiny/info").json()["rows"] == 16


def test_metrics_count_requests_latency_errors_and_name_the_serving_versions(http: TestClient) -> None:
    http.post("/search", json={"text": "cat", "k": 1})
    http.post("/search", json={"text": "cat", "modality": "smell"})
    text = http.get("/metrics").text
    assert 'mmr_http_requests_total{method="POST",route="/search",status="200"}' in text
    assert 'mmr_http_errors_total{route="/search",status="422"}' in text
    assert 'mmr_http_request_duration_seconds_bucket{le="0.5",method="POST",route="/search"}' in text
    assert 'mmr_serving_info{collection="mmr_tiny__m1__' in text and 'model_version="1"' in text
    assert 'mmr_dataset_ready{dataset="ghost"} 0.0' in text


def test_thumbnails_are_served_by_item_id_and_never_by_a_path(http: TestClient) -> None:
    r = http.get("/items/red0/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    for bad in ("nope", "..%2F..%2Fetc%2Fpasswd", "images%2Fred0.png", "red0%22%20or%20id%20like%20%22%25"):
        assert http.get(f"/items/{bad}/thumbnail").status_code == 404, bad


def test_mmr_serve_refuses_a_public_address_without_api_keys(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from mmretrieval.cli import main

    monkeypatch.delenv("MMR_API_KEYS", raising=False)
    monkeypatch.delenv("MMR_API_KEYS_FILE", raising=False)
    assert main(["serve", "--dataset", "tiny", "--host", "0.0.0.0"]) == 2
    assert "without API keys" in capsys.readouterr().err
    monkeypatch.setenv("MMR_API_KEYS", "short")
    assert main(["serve", "--dataset", "tiny", "--host", "0.0.0.0"]) == 2
    assert "at least 16 characters" in capsys.readouterr().err


def test_the_openapi_documents_every_status_and_an_enum_modality(http: TestClient) -> None:
    spec = http.get("/openapi.json").json()
    search = spec["paths"]["/search"]["post"]
    assert {"200", "400", "401", "403", "404", "413", "422", "500", "503"} <= set(search["responses"])
    assert {"415"} <= set(spec["paths"]["/search/upload"]["post"]["responses"])
    modality = spec["components"]["schemas"]["SearchRequest"]["properties"]["modality"]
    assert {"enum": ["text", "image", "audio", "video"], "type": "string"} in modality["anyOf"]
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"


def test_a_second_server_on_a_locked_lite_file_is_live_but_not_ready(app_and_http: tuple[Any, TestClient],
                                                                     published_tiny: Settings) -> None:
    """This process holds the Lite file (the module's application): ``mmr serve`` in another process starts,
    answers /health/live, and says why it is not ready, without the file's absolute path."""
    import os
    import subprocess
    import time

    import httpx

    port = free_port()
    env = {**os.environ, "MMR_HOME": str(published_tiny.home), "MMR_API_KEYS": KEY}
    proc = subprocess.Popen([str(BIN / "mmr"), "serve", "--dataset", "tiny", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                live = httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert live.status_code == 200
        ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=30)
        assert ready.status_code == 503 and ready.json()["datasets"]["tiny"] != "ready"
        search = httpx.post(f"http://127.0.0.1:{port}/search", json={"text": "cat"}, headers={"X-API-Key": KEY},
                            timeout=30)
        assert search.status_code == 503 and search.json()["request_id"]
        assert str(published_tiny.home) not in ready.text + search.text
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert str(published_tiny.home) not in out and KEY not in out
    print(ready.json()["datasets"]["tiny"])


@pytest.mark.parametrize("kwargs", [{"k": True}, {"k": 2.0}, {"rerank": True}, {"rerank": False}, {"rerank": 0.0},
                                    {"weights": {"text": float("nan")}}, {"weights": {"txt": 1.0}},
                                    {"labels": "red"}], ids=str)
def test_library_search_refuses_arguments_of_the_wrong_kind_as_a_query_error(published_tiny: Settings,
                                                                            kwargs: dict[str, Any]) -> None:
    """Booleans are not counts (a store error before), a NaN weight gave no hits, a string was split into labels."""
    from mmretrieval.core.errors import QueryError
    from mmretrieval.serving.client import RetrievalClient

    with RetrievalClient("tiny", settings=published_tiny) as client, pytest.raises(QueryError):
        client.search("a red square", **kwargs)


def test_the_upload_routes_known_fields_are_exactly_its_form(http: TestClient) -> None:
    """UPLOAD_FIELDS (what upload_fields lets through) and the route's documented multipart form never drift."""
    from mmretrieval.serving.http import UPLOAD_FIELDS

    spec = http.get("/openapi.json").json()
    body = spec["paths"]["/search/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]] if "$ref" in body else body
    assert set(form["properties"]) == UPLOAD_FIELDS
