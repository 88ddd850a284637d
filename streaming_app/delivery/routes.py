"""GET/HEAD /v/{id}/master.m3u8 and /v/{id}/{run}/{rung}/… — the Flask side of delivery.

The decisions live in serve.py; these views turn them into responses, refusals as JSON.
"""

from __future__ import annotations

import logging

from flask import Response
from flask import request as flask_request
from sqlalchemy.exc import SQLAlchemyError

from streaming_app.delivery import bp, serve
from streaming_app.errors import error_response

log = logging.getLogger(__name__)


class DeliveryResponse(Response):
    """Keeps Last-Modified on a 304, which werkzeug drops with the entity headers: a cache
    revalidating by date gets it back, as from nginx (which sends the files behind it)."""

    def get_wsgi_headers(self, environ):
        headers = super().get_wsgi_headers(environ)
        if self.status_code == 304 and "Last-Modified" in self.headers and "Last-Modified" not in headers:
            headers["Last-Modified"] = self.headers["Last-Modified"]
        return headers


def to_response(out: serve.Outcome) -> Response:
    if out.refused:
        resp = error_response(out.status, out.message, **out.extra)
        resp.headers.update(out.headers)
        return resp
    resp = DeliveryResponse(out.body, status=out.status, headers=out.headers, direct_passthrough=True)
    if not any(name == "Content-Type" for name, _ in out.headers):
        del resp.headers["Content-Type"]  # 304 and 302 describe no content
    return resp


@bp.route("/v/<video_id>/master.m3u8", methods=["GET", "HEAD"], merge_slashes=False)
def master_playlist(video_id: str):
    return to_response(serve.master_playlist(flask_request.environ, video_id))


@bp.route("/v/<video_id>/<run>/<path:path>", methods=["GET", "HEAD"], merge_slashes=False)
def run_file(video_id: str, run: str, path: str):
    return to_response(serve.run_file(flask_request.environ, video_id, run, path.split("/")))


@bp.errorhandler(SQLAlchemyError)
def _catalog_unavailable(exc: SQLAlchemyError):
    log.warning("catalog read failed: %s", exc)
    resp = error_response(503, "the catalog could not be read; try again shortly")
    resp.headers["Retry-After"] = "2"
    resp.headers["Cache-Control"] = "no-store"
    return resp
