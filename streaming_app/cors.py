"""One CORS policy for the whole app (media delivery, tus uploads, the JSON API).

Allowed origins come from VODFLOW_CORS_ORIGINS (comma-separated, default `*`). With `*` every
response says `Access-Control-Allow-Origin: *` whether or not the request had an Origin, so a
CDN can cache one copy for every site. With a list, an allowed origin is echoed back, others get
no CORS headers, and every response carries `Vary: Origin` — the answer depends on the Origin,
and a cache that ignored that would hand one site's headers to another (flask-cors leaves
`Vary` out for a single configured origin, which is why this is not flask-cors).

Preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered by whatever handles
OPTIONS for the route (Flask's automatic OPTIONS, or tus's own) and given the allowed methods,
request headers and max-age here; a preflight for a path nothing serves gets a 204 anyway, so
the browser reports the real request's status rather than a CORS failure.

Blueprints needing more headers call `expose_headers()` / `allow_headers()` at import time.
"""

from __future__ import annotations

from flask import Flask, Response, request

from config.settings import Settings

METHODS = ["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"]
MAX_AGE = 86400  # browsers cap it (Chromium at 2 h), but fewer preflights either way

_allow_headers: list[str] = [
    # media: ranges and revalidation
    "Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since",
    # API and uploads
    "Content-Type", "Authorization", "X-Requested-With", "X-HTTP-Method-Override",
    # tus 1.0.0
    "Tus-Resumable", "Upload-Length", "Upload-Offset", "Upload-Metadata", "Upload-Defer-Length",
    "Upload-Concat", "Upload-Checksum",
]
_expose_headers: list[str] = [
    # media: a player or a range-reading library reads these
    "Content-Length", "Content-Range", "Accept-Ranges", "ETag", "Last-Modified", "Retry-After",
    # tus 1.0.0: the client must read offsets and the upload's URL
    "Location", "Upload-Offset", "Upload-Length", "Upload-Metadata", "Upload-Defer-Length",
    "Upload-Expires", "Upload-Concat", "Tus-Resumable", "Tus-Version", "Tus-Extension",
    "Tus-Max-Size", "Tus-Checksum-Algorithm",
]


_joined: dict[str, str] = {}


def _add(target: list[str], names: tuple[str, ...]) -> None:
    known = {n.lower() for n in target}
    target.extend(n for n in names if n.lower() not in known)
    _joined.clear()


def _header_value(name: str, values: list[str]) -> str:
    # joined once, not on every media request
    value = _joined.get(name)
    if value is None:
        value = _joined[name] = ", ".join(values)
    return value


def expose_headers(*names: str) -> None:
    """Response headers browser scripts may read, in addition to the defaults."""
    _add(_expose_headers, names)


def allow_headers(*names: str) -> None:
    """Request headers browser scripts may send, in addition to the defaults."""
    _add(_allow_headers, names)


class CorsPolicy:
    def __init__(self, origins: list[str]):
        self.any = not origins or "*" in origins
        self.origins = {o.rstrip("/").lower() for o in origins}

    def allowed_origin(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for a request from `origin` (None: no CORS)."""
        if self.any:
            return "*"
        if origin and origin.rstrip("/").lower() in self.origins:
            return origin
        return None

    def headers_for(self, origin: str | None, preflight: bool) -> list[tuple[str, str]]:
        """The CORS response headers for a request from `origin` (Vary included)."""
        out = [] if self.any else [("Vary", "Origin")]
        allowed = self.allowed_origin(origin)
        if allowed is None:
            return out
        out.append(("Access-Control-Allow-Origin", allowed))
        if preflight:
            out += [("Access-Control-Allow-Methods", _header_value("methods", METHODS)),
                    ("Access-Control-Allow-Headers", _header_value("allow", _allow_headers)),
                    ("Access-Control-Max-Age", str(MAX_AGE))]
        else:
            out.append(("Access-Control-Expose-Headers", _header_value("expose", _expose_headers)))
        return out

    def apply(self, resp: Response) -> Response:
        preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        for name, value in self.headers_for(request.headers.get("Origin"), preflight):
            if name == "Vary":
                resp.vary.add(value)
            else:
                resp.headers[name] = value
        return resp


def init_cors(app: Flask, settings: Settings) -> CorsPolicy:
    policy = CorsPolicy(settings.cors_origin_list)

    @app.after_request
    def _cors(resp: Response) -> Response:
        if (request.method == "OPTIONS" and resp.status_code in (404, 405)
                and "Access-Control-Request-Method" in request.headers):
            resp = Response(status=204)
        return policy.apply(resp)

    app.extensions["vodflow_cors"] = policy
    return policy
