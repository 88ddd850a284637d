"""WSGI entry point for gunicorn: `gunicorn streaming_app.wsgi:app`."""

import gc

from streaming_app.app import create_app

app = create_app()

# Everything built so far (modules, Flask, SQLAlchemy, ~100k objects) lives as long as the
# worker. Left to the collector, every full collection walks all of it while holding the GIL:
# under 64 connections of playlist requests that measured 50-230 ms per collection, a few
# times a minute per worker, and every request in flight on that worker waited it out (the p99
# of a round jumped to 90-230 ms). Frozen, a full collection walks only what requests leave
# behind: about 5 ms. See docs/delivery.md.
gc.freeze()
