"""CORS for the upload endpoints, so a page on another origin can upload with tus-js-client.

Origins come from VODFLOW_CORS_ORIGINS (`*` or a comma-separated list). A browser only lets
script read response headers that are listed in Access-Control-Expose-Headers, and tus lives in
headers, so every tus header is exposed; preflights are cached for a day.
"""

from __future__ import annotations

from flask import Response, request

from config.settings import get_settings

ALLOW_METHODS = "POST, GET, HEAD, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = (
    "Authorization, Content-Type, Origin, X-Requested-With, X-HTTP-Method-Override, "
    "Tus-Resumable, Upload-Length, Upload-Offset, Upload-Metadata, Upload-Defer-Length, "
    "Upload-Concat, Upload-Checksum"
)
EXPOSE_HEADERS = (
    "Location, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm, "
    "Upload-Offset, Upload-Length, Upload-Metadata, Upload-Defer-Length, Upload-Concat, "
    "Upload-Expires, Vodflow-Video-Id, Vodflow-Status-Url, Vodflow-Watch-Url"
)


def apply(resp: Response) -> Response:
    origin = request.headers.get("Origin")
    resp.vary.add("Origin")
    if not origin:
        return resp
    allowed = get_settings().cors_origin_list
    if "*" in allowed:
        resp.headers["Access-Control-Allow-Origin"] = "*"
    elif origin in allowed:
        resp.headers["Access-Control-Allow-Origin"] = origin
    else:
        return resp
    resp.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
        resp.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        resp.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        resp.headers["Access-Control-Max-Age"] = "86400"
    return resp
