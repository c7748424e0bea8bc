"""The web page for watching runs: plain files served at ``/ui/``.

The files hold no data: the page fetches it from the API with the user's bearer token, so
they are served without one. Their responses carry strict security headers: scripts and
styles only from this origin (no inline script runs), no framing, no sniffing, no referrer.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_PATH = "/ui"
STATIC_DIR = Path(__file__).with_name("static")

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    )
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
    "cache-control": "no-cache",  # revalidated each load: a new release is seen at once
}


def on_page(path: str) -> bool:
    return path == PAGE_PATH or path.startswith(PAGE_PATH + "/")


class PageHeadersMiddleware:
    """Adds :data:`SECURITY_HEADERS` to every answer under ``/ui`` (its 404s too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        self._names = {name.encode() for name in SECURITY_HEADERS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not on_page(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                kept = [(k, v) for k, v in headers if k.lower() not in self._names]
                message = {**message, "headers": kept + self._headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def mount_page(app: FastAPI) -> None:
    app.mount(PAGE_PATH, StaticFiles(directory=STATIC_DIR, html=True), name="ui")
    app.add_middleware(PageHeadersMiddleware)
