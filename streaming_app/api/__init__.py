"""JSON API: videos (status, progress, metadata, renditions, errors), health."""

from flask import Blueprint

bp = Blueprint("api", __name__)

from streaming_app.api import videos  # noqa: E402,F401
