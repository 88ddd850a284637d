"""Response headers that make the browser refuse what vodflow never does, on every answer.

- `X-Content-Type-Options: nosniff`: a browser takes the declared type; an uploaded file served
  back can never be run as a script or a page because its bytes look like one.
- `Content-Security-Policy`: scripts, styles, fonts and frames come from this origin only (the
  templates have no inline script or style; the player's settings travel in a
  `<script type="application/json">` data block, which a CSP does not govern). hls.js plays
  through Media Source Extensions (`blob:` media) and transmuxes in a worker made from a
  `blob:` URL, so `media-src` and `worker-src` allow `blob:`. Segments redirected to presigned
  storage URLs (VODFLOW_REDIRECT_SEGMENTS) are fetched by hls.js from the storage's origin, so
  `connect-src` then allows that origin (or any https one when it is AWS).
- `frame-ancestors` (VODFLOW_FRAME_ANCESTORS, default `'self'`): who may embed the pages, for
  sites that put the player in an iframe; it replaces X-Frame-Options, which can name no list.
- `Referrer-Policy: strict-origin-when-cross-origin`: a video's URL is not sent to other sites.

A WSGI layer around the whole app adds them, so every answer gets them: pages, the API, uploads,
error answers, and delivery answers that skip Flask's request cycle (an `after_request` hook
would miss those). A view that sets one of these headers itself keeps its own.
"""

from __future__ import annotations

from urllib.parse import urlparse

from flask import Flask

from config.settings import Settings

REFERRER_POLICY = "strict-origin-when-cross-origin"


def content_security_policy(settings: Settings) -> str:
    connect = ["'self'"]
    if settings.redirect_segments and settings.storage_url.startswith("s3://"):
        endpoint = urlparse(settings.s3_endpoint_url or "")
        connect.append(f"{endpoint.scheme}://{endpoint.netloc}" if endpoint.netloc else "https:")
    directives = {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' data: blob:",
        "media-src": "'self' blob:",
        "worker-src": "'self' blob:",
        "connect-src": " ".join(connect),
        "font-src": "'self'",
        "object-src": "'none'",
        "base-uri": "'self'",
        "form-action": "'self'",
        "frame-ancestors": settings.frame_ancestors,
    }
    return "; ".join(f"{k} {v}" for k, v in directives.items())


def security_headers(settings: Settings) -> list[tuple[str, str]]:
    return [
        ("X-Content-Type-Options", "nosniff"),
        ("Content-Security-Policy", content_security_policy(settings)),
        ("Referrer-Policy", REFERRER_POLICY),
    ]


class SecurityHeaders:
    """WSGI middleware: adds the headers each answer does not already carry."""

    def __init__(self, app, headers: list[tuple[str, str]]):
        self.app = app
        self.headers = headers
        self.names = {name.lower() for name, _ in headers}

    def __call__(self, environ, start_response):
        def start(status, response_headers, exc_info=None):
            present = {name.lower() for name, _ in response_headers} & self.names
            extra = [(n, v) for n, v in self.headers if n.lower() not in present]
            return start_response(status, list(response_headers) + extra, exc_info)

        return self.app(environ, start)


def init_security(app: Flask, settings: Settings) -> list[tuple[str, str]]:
    headers = security_headers(settings)
    app.wsgi_app = SecurityHeaders(app.wsgi_app, headers)
    immediate = getattr(app, "immediate_answer", None)
    if immediate is not None:
        # answers a web worker sends without going through WSGI at all
        def immediate_with_headers(environ):
            out = immediate(environ)
            if out is None:
                return None
            status, response_headers, body = out
            present = {name.lower() for name, _ in response_headers}
            return status, list(response_headers) + [(n, v) for n, v in headers if n.lower() not in present], body

        app.immediate_answer = immediate_with_headers
    return headers
