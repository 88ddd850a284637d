"""Pages for people: library, upload, watch, stats."""

from flask import Blueprint

bp = Blueprint("pages", __name__)

from streaming_app.pages import views  # noqa: E402,F401
from streaming_app.pages import stats  # noqa: E402,F401
