"""Flask app factory. Blueprints: uploads (tus + one-shot POST), delivery (HLS), api, pages."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from catalog.db import get_engine
from config import links
from config.logging import setup_logging
from config.settings import Settings, get_settings
from streaming_app.api import bp as api_bp
from streaming_app.cors import init_cors
from streaming_app.delivery import bp as delivery_bp
from streaming_app.pages import bp as pages_bp
from streaming_app.request import StreamingRequest
from streaming_app.security import init_security
from streaming_app.uploads import bp as uploads_bp

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    setup_logging()
    settings = settings or get_settings()
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.request_class = StreamingRequest
    app.config["VODFLOW"] = settings
    # Uploads stream to disk; Flask must not cap or buffer them.
    app.config["MAX_CONTENT_LENGTH"] = None
    app.config["JSON_SORT_KEYS"] = False

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)

    get_engine()  # applies migrations before the first request

    app.register_blueprint(uploads_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(delivery_bp)
    app.register_blueprint(pages_bp)

    init_cors(app, settings)
    init_security(app, settings)  # every answer carries them
    # Behind vodflow's nginx (a unix socket only it reaches) the client's address is the last
    # X-Forwarded-For entry, which that nginx appends; scheme and host are passed through
    # untouched (Host as the client sent it), so they count only the proxies in front of nginx.
    behind_nginx = settings.web_socket is not None
    if settings.trusted_proxies or behind_nginx:
        # Outermost, so every layer sees the client's address (the analytics rate limit keys on
        # it) and the scheme and host it used (links in answers). Only as many hops as there are
        # proxies: a client can send X-Forwarded-* of its own, and those must not count.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n + behind_nginx, x_proto=n, x_host=n, x_port=n, x_prefix=n)

    @app.before_request
    def _links_from_request():
        # links in answers use the URL this request came in on (after ProxyFix)
        g.links_token = links.request_base.set(request.url_root.rstrip("/"))

    @app.teardown_request
    def _links_done(_exc):
        token = g.pop("links_token", None)
        if token is not None:
            links.request_base.reset(token)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        # JSON for API and media routes; pages keep Flask's HTML
        if request.path.startswith(("/api/", "/v/", "/files", "/healthz")):
            resp = jsonify(error=exc.name, message=exc.description, status=exc.code)
            resp.status_code = exc.code or 500
            for k, v in (exc.get_response().headers.items() if exc.response is None else exc.response.headers.items()):
                if k.lower() in ("allow", "retry-after", "tus-version", "tus-resumable"):
                    resp.headers[k] = v
            return resp
        return exc

    return app
