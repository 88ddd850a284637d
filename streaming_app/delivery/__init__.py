"""HLS delivery from fsspec storage: master playlists from the catalog, run files from storage."""

from flask import Blueprint

bp = Blueprint("delivery", __name__)

from streaming_app.delivery import routes  # noqa: E402,F401
