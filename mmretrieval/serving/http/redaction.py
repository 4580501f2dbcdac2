"""Secrets and absolute paths out of every message the service returns or logs."""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote_plus, urlsplit

from mmretrieval.core.settings import Settings
from mmretrieval.serving.http.config import ServiceConfig

# a query parameter of a URL in a log line (an access log line holds the request's whole target)
QUERY_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&;\s\"'#?]{1,100})=(?P<value>[^&;\s\"'#]*)")
# a run of URL characters holding percent escapes: a secret may hide in it encoded
ENCODED = re.compile(r"[^\s\"'<>]*%[0-9A-Fa-f]{2}[^\s\"'<>]*")
# query parameter names that carry a credential, compared lower-cased without `-`, `_`, `.`, whitespace
KEY_NAMES = frozenset({"apikey", "xapikey", "key", "token", "accesstoken", "apitoken", "authorization", "auth",
                       "secret", "password", "bearer"})


def key_like(name: str) -> bool:
    """Whether a query parameter name (percent-encoded or not) carries a credential (see :data:`KEY_NAMES`)."""
    return re.sub(r"[-_.\s]", "", unquote_plus(name)).lower() in KEY_NAMES


class Redactor:
    """Removes secrets (Milvus password or token, API keys) and absolute paths from a message: a secret written as
    is or percent-encoded (any case of the hex digits, ``+`` for spaces), and the value of every credential-like
    query parameter (``?api_key=...``, ``?X%2DAPI%2DKey=...``: see :func:`key_like`) whatever it holds."""

    # absolute file paths under the usual roots (URL paths such as /health/live are left alone)
    PATH = re.compile(r"(?<![\w:/.~…-])/(?:home|root|tmp|work|usr|opt|var|srv|mnt|data|etc|proc|run|private|Users|"
                      r"Volumes|nix|snap|lib|lib64|bin|sbin|media|scratch|workspace|app)(?:/[^\s'\"/:,;()\[\]]+)+/?")

    def __init__(self, secrets: Sequence[str], paths: Sequence[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)
        self.paths = sorted({p.rstrip("/") for p in paths if len(p.rstrip("/")) > 1}, key=len, reverse=True)

    @classmethod
    def for_settings(cls, settings: Settings, config: ServiceConfig) -> Redactor:
        """The secrets of ``settings`` (Milvus token, a password in the Milvus URI) and ``config`` (API keys); the
        paths of the workspace, of the folder holding the code and of the Python environment."""
        secrets = [settings.milvus_token, *settings.milvus_token.split(":", 1)[1:], *config.api_keys]
        parts = urlsplit(settings.milvus_uri) if "://" in settings.milvus_uri else None
        if parts is not None and parts.password:
            secrets += [parts.password, f"{parts.username}:{parts.password}"]
        code = Path(__file__).resolve().parents[3]  # what holds the mmretrieval package: a checkout, site-packages
        return cls(secrets, [str(settings.home), str(code), sys.prefix])

    def _query(self, match: re.Match[str]) -> str:
        if key_like(match["name"]):
            return f"{match['lead']}{match['name']}=***"
        return match.group(0)

    def _encoded(self, match: re.Match[str]) -> str:
        decoded = unquote_plus(match.group(0))
        return decoded if any(secret in decoded for secret in self.secrets) else match.group(0)

    def __call__(self, text: str) -> str:
        text = QUERY_PARAM.sub(self._query, text)
        if "%" in text:  # a secret percent-encoded: decoded here, replaced below
            text = ENCODED.sub(self._encoded, text)
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
