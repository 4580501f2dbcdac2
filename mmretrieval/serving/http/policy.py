"""The security headers of every response (:class:`SecurityHeaders`, the outermost middleware).

The search page loads only its own ``/static`` script and stylesheet and shows thumbnails as ``blob:`` URLs, so the
Content-Security-Policy allows nothing else: no inline script or style, no plugin, no ``<base>``, no framing by any
site (``frame-ancestors 'none'``, and ``X-Frame-Options: DENY`` for browsers without CSP level 2). When the
interactive API docs are turned on (``MMR_API_DOCS=1``), only ``/docs`` and ``/redoc`` get a policy that lets them
load Swagger UI / ReDoc from the jsDelivr CDN and run their inline start-up script.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
DOCS_CDN = "https://cdn.jsdelivr.net"
DOCS_CSP = (f"default-src 'self'; script-src 'self' 'unsafe-inline' {DOCS_CDN}; style-src 'self' 'unsafe-inline' "
            f"{DOCS_CDN} https://fonts.googleapis.com; img-src 'self' data: https://fastapi.tiangolo.com; "
            f"font-src 'self' https://fonts.gstatic.com; worker-src 'self' blob:; connect-src 'self'; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"content-security-policy", CSP.encode()),
)
_OURS = {name for name, _ in SECURITY_HEADERS}


class SecurityHeaders:
    """Sets :data:`SECURITY_HEADERS` on every HTTP response (replacing any the application set); ``/docs`` and
    ``/redoc`` get :data:`DOCS_CSP` instead when ``docs`` is on."""

    def __init__(self, app: ASGIApp, docs: bool = False) -> None:
        self.app = app
        self.docs = docs
        self.docs_headers = tuple((k, DOCS_CSP.encode()) if k == b"content-security-policy" else (k, v)
                                  for k, v in SECURITY_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ours = self.docs_headers if self.docs and scope["path"] in DOCS_PATHS else SECURITY_HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OURS]
                message = {**message, "headers": [*kept, *ours]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
