"""Successful delivery answers without Flask's request cycle.

Every player asks for the master playlist, then a segment every few seconds; under gunicorn
these are most of the requests the web app sees. Flask's request context, routing, response
object and after-request hooks cost about as much CPU as the delivery decision itself (measured:
~10x the decision for a cached master playlist), so this WSGI middleware runs serve.route() on
the raw environ and sends 200/206/304/302 answers directly, with the app's CORS headers.
Everything else — refusals (404, 410, 416, 503 …), other methods, other paths — goes through
Flask unchanged, which renders the JSON errors. App-wide response headers added later must be
added here too (see cors.py).
"""

from __future__ import annotations

from http import HTTPStatus

from streaming_app.cors import CorsPolicy
from streaming_app.delivery import serve

_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


class DeliveryFastPath:
    def __init__(self, app, cors: CorsPolicy):
        self.app = app
        self.cors = cors

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD")
        if (method == "GET" or method == "HEAD") and environ.get("PATH_INFO", "").startswith("/v/"):
            try:
                out = serve.route(environ)
            except Exception:  # noqa: BLE001 - Flask answers it again, with its error handling
                out = None
            if out is not None and not out.refused:
                headers = out.headers + self.cors.headers_for(environ.get("HTTP_ORIGIN"), preflight=False)
                start_response(_STATUS_LINES[out.status], headers)
                return out.body if method == "GET" else ()
        return self.app(environ, start_response)

    def immediate(self, environ) -> tuple[int, list[tuple[str, str]], object] | None:
        """(status, headers, body) for a delivery request answerable without waiting on the
        catalog or the network (serve.immediate), else None: what streaming_app.worker asks
        before handing a request to a thread. The body is bytes, or what the environ's
        wsgi.file_wrapper made of a local file."""
        out = serve.immediate(environ)
        if out is None:
            return None
        headers = out.headers + self.cors.headers_for(environ.get("HTTP_ORIGIN"), preflight=False)
        body = out.body
        if isinstance(body, (list, tuple)):
            body = b"".join(body)
        return out.status, headers, body


def install(app, cors: CorsPolicy) -> None:
    fast = DeliveryFastPath(app.wsgi_app, cors)
    app.wsgi_app = fast
    # the web worker answers these on its event loop, without a thread (streaming_app/worker.py)
    app.immediate_answer = fast.immediate
