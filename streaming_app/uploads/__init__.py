"""Uploads: the tus 1.0.0 resumable protocol under /files/ and a one-shot POST /api/uploads."""

from flask import Blueprint

bp = Blueprint("uploads", __name__)

from streaming_app.uploads import simple, tus  # noqa: E402,F401  (registers routes)
