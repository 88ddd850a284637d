"""The vodflow web app: uploads in, HLS out, pages for people."""

from streaming_app.app import create_app

__all__ = ["create_app"]
