"""The service's pure guards: configuration from the environment, redaction, filter complexity, image headers."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mmretrieval.backends.index import safe_uri
from mmretrieval.core.errors import ConfigError
from mmretrieval.core.settings import get_settings
from mmretrieval.serving.service import (
    LOOPBACK,
    Guard,
    Metrics,
    Redactor,
    ServiceConfig,
    filter_problem,
    image_header_problem,
    is_loopback,
)

KEY = "k" * 20


def test_configuration_comes_from_the_environment_and_a_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# service keys\n" + "f" * 24 + "\n\n", encoding="utf-8")
    config = ServiceConfig.from_env({"MMR_API_KEYS": f"{KEY}, {'g' * 16}", "MMR_API_KEYS_FILE": str(keys),
                                     "MMR_TRUSTED_HOSTS": "search.example.org,*.internal",
                                     "MMR_CORS_ORIGINS": "https://app.example/"})
    assert config.api_keys == (KEY, "g" * 16, "f" * 24)
    assert config.trusted_hosts == ("search.example.org", "*.internal")
    assert config.cors_origins == ("https://app.example",)
    default = ServiceConfig.from_env({})
    assert default.api_keys == () and default.trusted_hosts == LOOPBACK and default.cors_origins == ()
    with pytest.raises(ConfigError, match="16 characters"):
        ServiceConfig.from_env({"MMR_API_KEYS": "short"})
    with pytest.raises(ConfigError, match="MMR_API_KEYS_FILE"):
        ServiceConfig.from_env({"MMR_API_KEYS_FILE": str(tmp_path / "missing")})


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


def test_hosts_origins_and_loopback_addresses() -> None:
    guard = Guard(None, ServiceConfig(trusted_hosts=("127.0.0.1", "::1", "*.example.org"),
                                      cors_origins=("https://app.example",)), Metrics(), Redactor([]))
    assert guard._host_ok("127.0.0.1:8000") and guard._host_ok("[::1]:8000") and guard._host_ok("a.example.org")
    assert not guard._host_ok("example.org.evil.net") and not guard._host_ok("localhost:8000")
    assert guard._origin_ok("http://127.0.0.1:8000", "127.0.0.1:8000")  # same origin
    assert guard._origin_ok("https://app.example", "127.0.0.1:8000")
    assert not guard._origin_ok("null", "127.0.0.1:8000") and not guard._origin_ok("http://evil.net", "x")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")


def test_serve_refuses_a_port_in_use_before_loading_anything() -> None:
    import socket

    from mmretrieval.core.errors import ConfigError
    from mmretrieval.serving.service import port_problem

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            port_problem("127.0.0.1", port)
    port_problem("127.0.0.1", port)  # free again
