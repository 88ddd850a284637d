"""WSGI entry point for gunicorn: `gunicorn streaming_app.wsgi:app`."""

from streaming_app.app import create_app

app = create_app()
