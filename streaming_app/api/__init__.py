"""JSON API: videos (status, progress, metadata, renditions, errors), health, playback analytics."""

from flask import Blueprint

bp = Blueprint("api", __name__)

from streaming_app.api import videos  # noqa: E402,F401
from streaming_app.api import analytics, captions, stats  # noqa: E402,F401
